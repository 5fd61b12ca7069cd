"""The implementer: idea + whole baseline codebase -> the first diff that applies and passes preflight.

Paper: k diffs sampled in parallel, each failing one revised up to `revisions` times with the patch error,
first diff that applies wins. Ours adds a CPU preflight (byte-compile + the env's quick check): a preflight
failure goes back to revision, so no GPU time is spent on code that cannot start. `implement.preflight:
false` turns it off (the paper's setting: only patchability is checked before launch).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from toolkit import fsio, jobenv
from toolkit.cluster import confine
from toolkit.config import ImplementConfig
from toolkit.envs import EnvSpec, is_locked, list_files, strip_hidden
from toolkit.execute.patching import PatchOutcome, apply_patch
from toolkit.layout import CandidatePaths
from toolkit.llm.base import ChatRequest, LLMClient, LLMReply
from toolkit.prompts import number_lines, render
from toolkit.records import Idea, ImplementOutcome, to_json

PROMPT_SUFFIXES = (".py", ".sh")
ERROR_CHARS = 3000
SUPERSEDED = "another sample of this idea already passed"


@dataclass(frozen=True)
class Attempt:
    sample: int
    revision: int
    status: str                        # applied+passed | failed | refused | preflight_failed | llm_error | superseded
    reason: str = ""
    diff: str = ""
    code_dir: str = ""
    cost_usd: float = 0.0


class _Race:
    """The first chain to produce a working candidate wins; the others stop at their next step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checking = threading.Lock()   # held while one of the samples is preflighted
        self.winner: Attempt | None = None

    def claim(self, attempt: Attempt) -> bool:
        with self._lock:
            if self.winner is None:
                self.winner = attempt
                return True
            return False

    @property
    def over(self) -> bool:
        return self.winner is not None


def codebase_listing(spec: EnvSpec) -> list[dict[str, object]]:
    """Every .py/.sh file, line-numbered; hidden (locked eval) files shown only as a reserved note."""
    files = [f for f in list_files(spec.code_dir) if f.endswith(PROMPT_SUFFIXES)]
    return [{"path": f, "hidden": is_locked(f, spec.hidden),
             "numbered": "" if is_locked(f, spec.hidden) else number_lines((spec.code_dir / f).read_text())}
            for f in files]


def implement_prompt(spec: EnvSpec, idea: Idea) -> str:
    return render("implement", description=spec.description.strip(), files=codebase_listing(spec),
                  locked=list(spec.locked) or ["(none)"], idea=idea.text.strip())


class Implementer:
    def __init__(self, spec: EnvSpec, llm: LLMClient, cfg: ImplementConfig, data_dir: Path,
                 sandbox: str = "landlock", site: Site | None = None) -> None:
        self.spec, self.llm, self.cfg, self.data_dir, self.sandbox = spec, llm, cfg, data_dir, sandbox
        self.site = site or Site()
        set_preflight_concurrency(cfg.preflight_concurrency)
        self.system = render("implement_system")

    def implement(self, idea: Idea, final: CandidatePaths) -> ImplementOutcome:
        """Build the candidate in a hidden staging dir, then rename it into place (atomic for readers)."""
        start = time.monotonic()
        staging = final.root.parent / f".building-{final.cid}"
        shutil.rmtree(staging, ignore_errors=True)
        cand = CandidatePaths(staging)
        cand.implement_dir.mkdir(parents=True)
        fsio.atomic_write_json(cand.idea, to_json(idea))
        try:
            outcome, win = self._race(idea, cand)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        outcome = replace(outcome, cid=final.cid, wall_s=time.monotonic() - start)
        self._finish(cand, outcome, win)
        shutil.rmtree(final.root, ignore_errors=True)
        staging.rename(final.root)
        return outcome

    def _race(self, idea: Idea, cand: CandidatePaths) -> tuple[ImplementOutcome, Attempt | None]:
        prompt = implement_prompt(self.spec, idea)
        fsio.atomic_write_text(cand.implement_dir / "prompt.md", prompt)
        race = _Race()
        with ThreadPoolExecutor(max_workers=self.cfg.samples) as pool:
            chains = list(pool.map(lambda k: self._chain(k, prompt, cand, race), range(self.cfg.samples)))
        return self._outcome(cand.cid, race, [a for chain in chains for a in chain]), race.winner

    def _chain(self, sample: int, prompt: str, cand: CandidatePaths, race: _Race) -> list[Attempt]:
        attempts: list[Attempt] = []
        request = prompt
        for revision in range(self.cfg.revisions + 1):
            if race.over:
                break
            attempt = self._attempt(sample, revision, request, cand, race)
            attempts.append(attempt)
            if attempt.status in ("llm_error", "applied", "superseded"):
                break
            request = render("revise", implement_prompt=prompt, previous_diff=attempt.diff or "(no diff found)",
                             error=attempt.reason[:ERROR_CHARS])
        return attempts

    def _attempt(self, sample: int, revision: int, prompt: str, cand: CandidatePaths, race: _Race) -> Attempt:
        tag = f"s{sample}r{revision}"
        reply = self.llm.complete(ChatRequest(prompt=prompt, system=self.system,
                                              tag=f"implement:{cand.cid.removeprefix('.building-')}:{tag}"))
        self._save_reply(cand, tag, prompt, reply)
        if reply.status != "ok":
            return Attempt(sample, revision, "llm_error", f"LLM {reply.status}: {reply.reason}",
                           cost_usd=reply.cost_usd)
        if race.over:   # another sample won while this one waited for its reply: no patch, no preflight
            return Attempt(sample, revision, "superseded", SUPERSEDED, cost_usd=reply.cost_usd)
        dest = cand.root / "attempts" / tag
        patch = apply_patch(reply.text, self.spec.code_dir, dest, self.spec.locked)
        attempt = replace(self._judge(sample, revision, patch, dest, race), cost_usd=reply.cost_usd)
        fsio.atomic_write_json(cand.implement_dir / f"{tag}.json", attempt.__dict__)
        return attempt

    def _judge(self, sample: int, revision: int, patch: PatchOutcome, dest: Path, race: _Race) -> Attempt:
        if patch.status != "applied":
            return Attempt(sample, revision, patch.status, patch.reason, patch.diff)
        if not self.cfg.preflight:
            return self._unchecked(sample, revision, patch, dest, race)
        with race.checking:   # one preflight per idea at a time: a pass settles the race before the next starts
            attempt = self._preflighted(sample, revision, patch, dest, race)
        if attempt.status != "applied":
            shutil.rmtree(dest, ignore_errors=True)
        return attempt

    def _preflighted(self, sample: int, revision: int, patch: PatchOutcome, dest: Path, race: _Race) -> Attempt:
        if race.over:
            return Attempt(sample, revision, "superseded", SUPERSEDED, patch.diff)
        problem = preflight(dest, self.spec, self.cfg.quick_check_timeout_s, self.data_dir, self.sandbox, self.site)
        if problem:
            return Attempt(sample, revision, "preflight_failed", problem, patch.diff)
        race.claim(winner := Attempt(sample, revision, "applied", "", patch.diff, str(dest)))
        return winner

    def _unchecked(self, sample: int, revision: int, patch: PatchOutcome, dest: Path, race: _Race) -> Attempt:
        """Preflight off (the paper's setting): the first diff that applies wins, checked by nothing else."""
        winner = Attempt(sample, revision, "applied", "", patch.diff, str(dest))
        if race.claim(winner):
            return winner
        shutil.rmtree(dest, ignore_errors=True)
        return Attempt(sample, revision, "superseded", SUPERSEDED, patch.diff)

    def _save_reply(self, cand: CandidatePaths, tag: str, prompt: str, reply: LLMReply) -> None:
        if tag != "s0r0" and not tag.endswith("r0"):
            fsio.atomic_write_text(cand.implement_dir / f"{tag}.prompt.md", prompt)
        text = reply.text if reply.status == "ok" else f"[{reply.status}] {reply.reason}"
        fsio.atomic_write_text(cand.implement_dir / f"{tag}.response.md", text)
        if reply.thinking:
            fsio.atomic_write_text(cand.implement_dir / f"{tag}.thinking.md", reply.thinking)

    def _outcome(self, cid: str, race: _Race, attempts: list[Attempt]) -> ImplementOutcome:
        calls, cost_usd = len(attempts), sum(a.cost_usd for a in attempts)
        win = race.winner
        if win is None:
            return ImplementOutcome(cid=cid, status=_failure_status(attempts), reason=_failure_reason(attempts),
                                    attempts=calls, cost_usd=cost_usd)
        return ImplementOutcome(cid=cid, status="ready", sample=win.sample, revision=win.revision,
                                preflight="passed" if self.cfg.preflight else "skipped",
                                diff_lines=len(win.diff.splitlines()), files=_diff_files(win.diff), attempts=calls,
                                cost_usd=cost_usd)

    def _finish(self, cand: CandidatePaths, outcome: ImplementOutcome, win: Attempt | None) -> None:
        if win is not None:
            Path(win.code_dir).rename(cand.code)
            fsio.atomic_write_text(cand.patch, win.diff)
        shutil.rmtree(cand.root / "attempts", ignore_errors=True)
        fsio.atomic_write_json(cand.implement, to_json(outcome))
        if outcome.status == "ready":
            fsio.atomic_write_text(cand.ready, "")


def _diff_files(diff: str) -> tuple[str, ...]:
    from toolkit.execute.patching import touched_paths

    return touched_paths(diff)


def _failure_status(attempts: list[Attempt]) -> str:
    """Refused in every chain's last attempt -> invalid (the idea needs locked files); otherwise failed."""
    last = {a.sample: a for a in attempts}
    return "invalid" if last and all(a.status == "refused" for a in last.values()) else "failed"


def _failure_reason(attempts: list[Attempt]) -> str:
    if not attempts:
        return "no attempt was made"
    counts: dict[str, int] = {}
    for a in attempts:
        counts[a.status] = counts.get(a.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{len(attempts)} attempts ({summary}); last: {attempts[-1].reason[:500]}"


@dataclass(frozen=True)
class Site:
    """The site's job environment (cluster.env_passthrough, cluster.sandbox_read), for the quick check too."""
    env_passthrough: tuple[str, ...] = ()
    sandbox_read: tuple[str, ...] = ()


def preflight(code_dir: Path, spec: EnvSpec, timeout_s: float, data_dir: Path, sandbox: str = "landlock",
              site: Site | None = None) -> str:
    """'' if the patched codebase byte-compiles and passes the env's quick check, else the error."""
    problem = _compile_all(code_dir)
    if problem or not spec.quick_check.strip():
        return problem
    return _quick_check(code_dir, spec, timeout_s, data_dir, sandbox, site or Site())


def _compile_all(code_dir: Path) -> str:
    for rel in list_files(code_dir):
        if rel.endswith(".py") and (code_dir / rel).is_file() and not (code_dir / rel).is_symlink():
            try:
                compile((code_dir / rel).read_bytes(), rel, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                return f"preflight: {rel} does not compile: {exc}"
    return ""


_PREFLIGHT_SLOTS = threading.BoundedSemaphore(2)


def set_preflight_concurrency(n: int) -> None:
    """Quick checks run on the daemon's host: cap how many run at once (samples x workers could be 160)."""
    global _PREFLIGHT_SLOTS
    _PREFLIGHT_SLOTS = threading.BoundedSemaphore(max(1, n))


def _quick_check(code_dir: Path, spec: EnvSpec, timeout_s: float, data_dir: Path, sandbox: str, site: Site) -> str:
    with _PREFLIGHT_SLOTS:
        return _quick_check_now(code_dir, spec, timeout_s, data_dir, sandbox, site)


def _quick_check_now(code_dir: Path, spec: EnvSpec, timeout_s: float, data_dir: Path, sandbox: str,
                     site: Site) -> str:
    """Run the quick check in a throwaway copy, confined like a job (on the daemon's host, where the API keys
    are): it writes only that copy and its scratch, reads only the public data, sees the job allow-list
    environment, and anything it leaves running is found by ancestry and killed. Its output goes back to
    the implementer, so it must not be able to read hidden files: the copy holds none."""
    with tempfile.TemporaryDirectory(prefix="toolkit-preflight-") as tmp:
        work, scratch = Path(tmp) / "code", Path(tmp) / "scratch"
        shutil.copytree(code_dir, work, symlinks=True)
        strip_hidden(work, spec.hidden)
        scratch.mkdir()
        env = {**jobenv.job_environ(extra_allow=site.env_passthrough), **{k: str(v) for k, v in spec.env_vars.items()},
               "TOOLKIT_QUICK_CHECK": "1", "TOOLKIT_SCRATCH": str(scratch), "TOOLKIT_SMOKE": "1",
               "TOOLKIT_DATA_DIR": str(data_dir)}
        read = [str(data_dir), *confine.existing_paths(site.sandbox_read)]
        policy = confine.candidate_policy(work, scratch, read, sandbox, network=spec.network, timeout_s=timeout_s)
        launch = confine.launch_argv(policy, ["bash", "-c", spec.quick_check], Path(tmp) / "control")
        proc = subprocess.run(launch.argv, cwd=work, env=confine.confined_environ(env, scratch), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout_s + 60)
        report = confine.read_report(launch.report)
    output = (proc.stdout + proc.stderr)[-ERROR_CHARS:]
    if report.error:
        return f"preflight: the sandbox could not start the quick check: {report.error}"
    if report.returncode is None:
        return f"preflight: quick check `{spec.quick_check}` took longer than {timeout_s:.0f} s"
    if report.leftovers:
        return f"preflight: quick check `{spec.quick_check}` left {report.leftovers} process(es) running (killed)"
    if report.returncode != 0:
        return f"preflight: quick check `{spec.quick_check}` exited {report.returncode}:\n{output}"
    return ""
