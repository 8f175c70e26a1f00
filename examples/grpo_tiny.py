"""A minimal GRPO-style loop on the engine: rollout → rewards → loss from the engine's logprobs →
optimizer step → `load_weights` → next rollout. The reward is trivially learnable (the completion
contains the digit 7), so a tiny random model learns it in a few dozen steps on a CPU.

    python examples/grpo_tiny.py MODEL_DIR [--steps 30]

The trainer is a plain HF model with torch's Adam; the engine only samples. Each step samples
n completions per prompt (one prefill, forked samples), scores them, and takes one clipped policy-
gradient step with group-normalised advantages (GRPO), using the engine's per-token logprobs as
the behaviour policy's: with one update per rollout the ratio starts at exactly 1, which is what
the logprob-exactness tests guarantee. The new weights go back into the engine in place.
"""

from __future__ import annotations

import argparse

import torch

from engine import LLM, SamplingParams
from engine.sampler import derive_seed

PROMPTS = [
    "Natalia sold clips to 48 of her friends.", "Weng earns $12 an hour for babysitting.",
    "Betty is saving money for a new wallet.", "Julie is reading a 120-page book.",
    "James writes a 3-page letter to 2 different friends.", "Mark has a garden with flowers.",
    "Albert is wondering how much pizza he can eat.", "Ken created a care package to send to his brother.",
]


def reward(text: str) -> float:
    return 1.0 if "7" in text else 0.0


def completion_logprobs(policy, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[torch.Tensor]:
    """Per-token log-probabilities of each completion under `policy`, with gradients (one padded batch)."""
    seqs = [p + c for p, c in zip(prompt_ids, completions)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logp = torch.log_softmax(policy(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        rows = logp[i, len(p) - 1 : len(p) - 1 + len(c)]
        out.append(rows.gather(1, torch.tensor(c).view(-1, 1)).squeeze(1))
    return out


def train(model_dir, steps: int = 30, seed: int = 0, n: int = 8, prompts_per_step: int = 4, max_tokens: int = 8,
          lr: float = 3e-3, clip: float = 0.2, log=None) -> list[float]:
    """Returns the mean reward of each step's rollout."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    llm = LLM(model_dir, num_kv_blocks=256, max_model_len=256, dtype="float32")
    history = []
    for step in range(steps):
        batch = [PROMPTS[(step * prompts_per_step + i) % len(PROMPTS)] for i in range(prompts_per_step)]
        params = [SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, logprobs=0, logprobs_mode="processed",
                                 seed=derive_seed("grpo", seed, step, i)) for i in range(len(batch))]
        outs = llm.generate(batch, params)
        prompt_ids, completions, old_logp, adv, rewards = [], [], [], [], []
        for out in outs:
            r = torch.tensor([reward(c.text) for c in out.outputs])
            a = (r - r.mean()) / (r.std() + 1e-4)  # group-normalised: GRPO's advantage
            rewards += r.tolist()
            for c, ai in zip(out.outputs, a.tolist()):
                if not c.token_ids:
                    continue
                prompt_ids.append(out.prompt_token_ids)
                completions.append(list(c.token_ids))
                old_logp.append(torch.tensor(c.logprobs))
                adv.append(ai)
        history.append(sum(rewards) / len(rewards))
        new_logp = completion_logprobs(policy, prompt_ids, completions)
        losses = []
        for new, old, a in zip(new_logp, old_logp, adv):
            ratio = torch.exp(new - old)
            surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
            losses.append(-surrogate.mean())
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        llm.load_weights((name, p.detach()) for name, p in policy.named_parameters())
        if log:
            log(f"step {step:3d}  mean reward {history[-1]:.3f}  loss {loss.item():+.4f}")
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train(args.model_dir, steps=args.steps, seed=args.seed, log=print)


if __name__ == "__main__":
    main()
