"""
GRPO fine-tuning of Qwen2.5-Math-1.5B on the MATH training set, on one GPU, for a
fixed wall-clock budget. Rollouts come from vLLM on the same GPU (weights copied
from the policy after every step); without CUDA or vLLM, from HF `generate`.

This is the file the search edits. What the (locked, hidden) evaluation relies on:
- at every validation point the policy is saved with data.save_checkpoint(model, step);
  as in the paper's release, the validation points are every `eval_every` GRPO steps
  starting at step 0 (the untrained model) and never after the last step: steps
  0, 2, ..., 18 of 20 (`eval_steps`); at most 10 checkpoints are scored;
- the eval loads ONLY those weights into the base architecture (data.model_dir():
  same parameter names and shapes, no new modules), prompts each of the 500 MATH-500
  problems with the r1_zero prompt below, samples one answer per problem with the
  rollout settings (temperature 1.0, top_p 1.0, up to 1024 tokens, stop at </answer>),
  grades the text inside <answer> ... </answer> (after </think>) for mathematical
  equivalence, and reports the best checkpoint's accuracy;
- train only on data.load_train_problems(), and finish within TRAIN_BUDGET_S.
The training reward (reward_fn) is ours to change; the eval's grading is not.

Run: python train.py      smoke (tiny model, CPU): TOOLKIT_SMOKE=1 python train.py
Preflight (one tiny step): TOOLKIT_QUICK_CHECK=1 TOOLKIT_SMOKE=1 python train.py
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import time

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from math_verify import parse, verify
from transformers import AutoModelForCausalLM, AutoTokenizer

import data

# -----------------------------------------------------------------------------
# hyper-parameters (the paper's GRPO baseline)

n_grpo_steps = 20
n_prompts_per_step = 128  # questions sampled per GRPO step
group_size = 8  # responses per question; advantages compare responses to the same question
sampling_temperature = 1.0
sampling_max_tokens = 1024
learning_rate = 1e-5
betas = (0.9, 0.95)
weight_decay = 0.0
grad_clip = 1.0
micro_batch_size = 4  # sequences per forward/backward
gradient_accumulation_steps = 16  # micro-batches per optimizer step: 64 sequences per update, so
# one GRPO step of 128 * 8 = 1024 rollouts makes 16 updates; all but the first are slightly
# off-policy, which is what the clipped importance ratio of grpo_clip is for
loss_type = "grpo_clip"  # "grpo_clip" | "reinforce_with_baseline" | "no_baseline"
cliprange = 0.2
advantage_eps = 1e-6
use_std_normalization = True  # divide advantages by the group's std
eval_every = 2  # save a checkpoint for the eval every 2 GRPO steps, from step 0
gpu_memory_utilization = 0.55  # vLLM's share of the GPU; the policy and AdamW use the rest
hf_generation_batch_size = 64  # rollouts per HF generate call (fallback without vLLM)
budget_s = float(os.environ.get("TRAIN_BUDGET_S", "3600"))  # wall clock, from start to the last save
seed = 42
# the toolkit sets TOOLKIT_SEED for its noise-floor and certification re-runs: it then replaces the seed above,
# which seeds the question order, the rollouts' sampling (HF generate and vLLM) and the update order; keep
# honouring it (unset, every run is the same seed-42 run)
if "TOOLKIT_SEED" in os.environ:
    seed_text = os.environ["TOOLKIT_SEED"]
    if not (seed_text.isdecimal() and int(seed_text) < 2**32):
        raise ValueError(f"TOOLKIT_SEED must be a decimal integer in [0, 2**32), got {seed_text!r}")
    seed = int(seed_text)

# smoke mode: the same code on a tiny random model and arithmetic problems, on a CPU, in seconds
smoke = data.smoke()
quick_check = os.environ.get("TOOLKIT_QUICK_CHECK", "") == "1"
if smoke or quick_check:
    n_grpo_steps = 1 if quick_check else 4
    n_prompts_per_step, group_size = 4, 4
    sampling_max_tokens = 24
    micro_batch_size, gradient_accumulation_steps = 4, 2
    hf_generation_batch_size = 16
    learning_rate = 1e-3  # the tiny model is random: nothing to preserve

# the validation points: the model after 0, eval_every, 2 * eval_every, ... GRPO steps, before the last step
# (20 steps: 0, 2, ..., 18; the weights after the last step are never scored, as in the paper's release)
eval_steps = list(range(0, n_grpo_steps, eval_every))

device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)  # smoke jobs get one core; more threads than cores makes torch crawl
use_vllm = device == "cuda" and importlib.util.find_spec("vllm") is not None and not smoke
use_vllm = use_vllm and os.environ.get("GRPO_USE_VLLM", "1") != "0"

# -----------------------------------------------------------------------------
# prompt and training reward

# r1_zero: the base model reasons inside <think> and puts the final answer in <answer> tags.
# The eval uses this exact prompt; training could use another, at its own risk.
R1_ZERO_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"
)


def reward_fn(response: str, answer: str) -> dict[str, float]:
    """1 for a well-formed response whose answer is equivalent to the reference, else 0."""
    if "</think> <answer>" not in response or "</answer>" not in response:
        return {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    predicted = response.split("<answer>")[-1].split("</answer>")[0].strip()
    # MATH answers are bare LaTeX; math-verify needs math delimiters to read it as such
    gold = parse(f"${answer}$")
    guess = parse(f"${predicted}$") or parse(predicted)
    correct = float(bool(gold) and bool(guess) and verify(gold, guess))
    return {"format_reward": 1.0, "answer_reward": correct, "reward": correct}


# -----------------------------------------------------------------------------
# GRPO pieces


def group_normalized_advantages(rewards: torch.Tensor) -> torch.Tensor:
    # rewards are laid out group by group: compare each response with its siblings only
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if use_std_normalization:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + advantage_eps)
    return advantages.flatten()


def tokenize_rollout(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    # the prompt and response are tokenized separately so the response tokens are exactly
    # the ones the loss sees; returns the ids and the number of prompt tokens
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(response, add_special_tokens=False).input_ids
    return prompt_ids + response_ids, len(prompt_ids)


def collate(rollouts: list[tuple[list[int], int]], pad_id: int):
    """Right-padded inputs, next-token labels and a mask that is 1 on response tokens only."""
    length = max(len(ids) for ids, _ in rollouts) - 1
    input_ids = torch.full((len(rollouts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rollouts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rollouts), length))
    for row, (ids, n_prompt) in enumerate(rollouts):
        n = len(ids) - 1
        input_ids[row, :n] = torch.tensor(ids[:-1])
        labels[row, :n] = torch.tensor(ids[1:])
        mask[row, n_prompt - 1:n] = 1.0  # label position i predicts token i+1
    return input_ids.to(device), labels.to(device), mask.to(device)


def token_log_probs(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    attention_mask = torch.ones_like(input_ids)  # right padding: real tokens never attend to it
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, labels.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sampling_log_probs(model, rollouts, pad_id: int) -> list[torch.Tensor]:
    """Per-rollout response-token log-probs (unpadded, on the CPU) before this step's updates."""
    result = []
    for start in range(0, len(rollouts), micro_batch_size):
        chunk = rollouts[start:start + micro_batch_size]
        input_ids, labels, _ = collate(chunk, pad_id)
        log_probs = token_log_probs(model, input_ids, labels).cpu()
        result += [row[:len(ids) - 1] for row, (ids, _) in zip(log_probs, chunk)]
    return result


def policy_loss(log_probs, old_log_probs, advantages, mask) -> tuple[torch.Tensor, float]:
    """Per-sequence mean of the per-token policy-gradient loss, averaged over the micro-batch."""
    adv = advantages.unsqueeze(-1)
    if loss_type == "grpo_clip":
        ratio = torch.exp(log_probs - old_log_probs)
        clipped = torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
        per_token = -torch.min(ratio * adv, clipped * adv)
        clip_frac = ((ratio * adv > clipped * adv).float() * mask).sum().item() / max(mask.sum().item(), 1)
    else:  # plain REINFORCE: with the group-mean baseline folded into the advantage, or raw rewards
        per_token, clip_frac = -adv * log_probs, 0.0
    per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_sequence.mean(), clip_frac


# -----------------------------------------------------------------------------
# rollouts: vLLM on the same GPU when available, HF generate otherwise


def vllm_model(llm):
    # the engine must run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) for this to reach it
    worker = llm.llm_engine.model_executor.driver_worker
    return getattr(worker, "worker", worker).model_runner.model


def sync_policy_to_vllm(model, llm) -> None:
    weights = ((name, tensor.detach().to(torch.bfloat16)) for name, tensor in model.state_dict().items())
    try:
        target = vllm_model(llm)
    except AttributeError:  # newer vLLM: go through the public hook instead
        llm.apply_model(lambda m: m.load_weights(weights))
        return
    target.load_weights(weights)


def generate_vllm(llm, prompts: list[str]) -> list[str]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=sampling_temperature, top_p=1.0, max_tokens=sampling_max_tokens,
                            n=group_size, stop=["</answer>"], include_stop_str_in_output=True, seed=None)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [completion.text for out in outputs for completion in out.outputs]


@torch.no_grad()
def generate_hf(model, tokenizer, prompts: list[str]) -> list[str]:
    model.eval()
    repeated = [p for p in prompts for _ in range(group_size)]
    responses = []
    for start in range(0, len(repeated), hf_generation_batch_size):
        enc = tokenizer(repeated[start:start + hf_generation_batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model.generate(**enc, do_sample=True, temperature=sampling_temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=sampling_max_tokens, stop_strings=["</answer>"],
                                 tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        # cut after the first </answer>, as vLLM's stop string does
        responses += [t.split("</answer>")[0] + "</answer>" if "</answer>" in t else t for t in texts]
    model.train()
    return responses


# -----------------------------------------------------------------------------
# training


def main() -> None:
    t0 = time.time()
    random.seed(seed)
    torch.manual_seed(seed)
    n_rollouts = n_prompts_per_step * group_size
    train_batch_size = micro_batch_size * gradient_accumulation_steps
    assert n_rollouts % train_batch_size == 0, "rollouts per step must be a multiple of the train batch"
    problems = data.load_train_problems()
    tokenizer = AutoTokenizer.from_pretrained(data.model_dir())
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    llm = None
    if use_vllm:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights are copied into vLLM in-process
        from vllm import LLM
        llm = LLM(model=str(data.model_dir()), dtype="bfloat16", gpu_memory_utilization=gpu_memory_utilization,
                  enable_prefix_caching=False, seed=seed)  # a prefix cache would keep stale-weight KVs
    # fp32 master weights: lr 1e-5 updates vanish in bf16 weights; bf16 autocast does the compute
    model = AutoModelForCausalLM.from_pretrained(data.model_dir(), dtype=torch.float32).to(device)
    if device == "cuda":
        model.gradient_checkpointing_enable()  # trades compute for the memory vLLM holds
        model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
    print(json.dumps({"event": "start", "device": device, "vllm": use_vllm, "train_problems": len(problems),
                      "setup_s": round(time.time() - t0, 1)}), flush=True)

    step_s = 0.0
    for step in range(n_grpo_steps):  # `step` GRPO steps are done when an iteration starts
        if step in eval_steps:  # a validation point: the eval scores these weights after the run
            data.save_checkpoint(model, step)
        if time.time() - t0 + step_s > budget_s:  # the next step would not finish in the budget
            break
        t_step = time.time()
        batch = random.sample(problems, n_prompts_per_step)
        prompts = [R1_ZERO_PROMPT.format(question=p["problem"]) for p in batch]
        responses = generate_vllm(llm, prompts) if llm else generate_hf(model, tokenizer, prompts)
        answers = [p["answer"] for p in batch for _ in range(group_size)]
        scores = [reward_fn(r, a) for r, a in zip(responses, answers)]
        rewards = torch.tensor([s["reward"] for s in scores])
        advantages = group_normalized_advantages(rewards) if loss_type != "no_baseline" else rewards
        rollouts = [tokenize_rollout(tokenizer, p, r) for p, r in zip(
            [p for p in prompts for _ in range(group_size)], responses)]
        t_gen = time.time() - t_step

        # log-probs of the policy that sampled the rollouts, for the importance ratio; with a
        # single update per step the policy is unchanged when the loss runs, so they are free
        on_policy = n_rollouts == train_batch_size
        old_log_probs = [] if on_policy else sampling_log_probs(model, rollouts, tokenizer.pad_token_id)

        order = torch.randperm(n_rollouts).tolist()
        losses, clip_fracs = [], []
        for update in range(n_rollouts // train_batch_size):
            for micro in range(gradient_accumulation_steps):
                first = (update * gradient_accumulation_steps + micro) * micro_batch_size
                idx = order[first:first + micro_batch_size]
                input_ids, labels, mask = collate([rollouts[i] for i in idx], tokenizer.pad_token_id)
                log_probs = token_log_probs(model, input_ids, labels)
                old = log_probs.detach() if on_policy else pad_sequence(
                    [old_log_probs[i] for i in idx], batch_first=True).to(device)
                loss, clip_frac = policy_loss(log_probs, old, advantages[idx].to(device), mask)
                (loss / gradient_accumulation_steps).backward()
                losses.append(loss.item())
                clip_fracs.append(clip_frac)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if llm:
            sync_policy_to_vllm(model, llm)
        step_s = time.time() - t_step
        print(json.dumps({"step": step + 1, "train_reward": round(rewards.mean().item(), 4),
                          "format_rate": round(sum(s["format_reward"] for s in scores) / len(scores), 4),
                          "loss": round(sum(losses) / len(losses), 5),
                          "clip_frac": round(sum(clip_fracs) / len(clip_fracs), 4),
                          "gen_s": round(t_gen, 1), "step_s": round(step_s, 1),
                          "elapsed_s": round(time.time() - t0, 1)}), flush=True)
    print(json.dumps({"event": "done", "elapsed_s": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
