"""`toolkit rl`: GRPO on an open-weight ideator, rewarded by executing its ideas (the paper's second loop).

config      frozen dataclasses (the executor's RunConfig embedded as `run`)
layout      every path of an RL directory
policy      the Hugging Face causal LM: load by name/path, or build a tiny one offline; full or LoRA
prompt      the one ideation prompt per environment (templates/rl_prompt.j2)
sampling    G completions per prompt (vLLM on GPUs, HF generate otherwise), thinking/idea split
rewards     execution reward + the mitigations (length reward, Jaccard penalty, novelty bonus)
grpo        group-normalised advantages and the policy-gradient update
metrics     per-step metrics, diversity, the Rich table
checkpoint  atomic per-step checkpoints (weights, optimiser, RNG, archive)
trainer     the loop: sample -> execute -> update -> log -> checkpoint
cli         `toolkit rl`, in-process or as a SLURM job
"""
