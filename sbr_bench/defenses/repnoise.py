"""``defense=repnoise``: Representation Noising (RepNoise; Rosati et al., arXiv 2405.14577, NeurIPS 2024).

During the provider's safety alignment, push the model's representations of harmful text towards
Gaussian noise and make harmful text unpredictable from every layer, so that a later harmful
fine-tuning cannot simply reuse harmful features the model still holds.

    L = l_harmless + beta * (1/L) sum_l MMD(a_l, z_l) - alpha * log(l_ascent + 1)

- ``l_harmless``: the stage's own task loss, the response-only CE on the alignment data (harmful
  prompts -> refusals, benign prompts -> helpful answers).
- ``a_l``: the output of layer l's MLP (before the residual add) on a harmful batch, zero outside
  the token mask, flattened to one T*d vector per example; ``z_l`` is standard Gaussian noise of
  the same shape, masked the same way (a fresh draw per layer and step, from torch's RNG).
- ``MMD``: multi-kernel Gaussian MMD, biased estimator (the mean of k(x,x') + k(z,z') - 2 k(x,z)
  over all pairs, diagonals included) with ``kernel_num`` kernels exp(-||u - v||^2 / s_i),
  s_i = s * kernel_mul^(i - kernel_num // 2), i = 0 .. kernel_num - 1, where s is the mean squared
  distance between distinct rows of [a; z] (no gradient through s).
- ``l_ascent = [CE(final logits) + sum_{i=0..L} CE(lm_head(norm(h_i)))] / (L + 1)``: the harmful
  answer's CE under the model itself plus a logit-lens CE from every hidden state (h_0 the
  embedding output, h_i layer i's output), at the masked tokens. The logit lens runs only at those
  positions, never over prompt or padding.

Paper symbols -> arguments:
    alpha            -> ``alpha``, the weight of the ascent term (1: paper App. B.2 / official loss.py;
                        0.1 in the Booster repo's HFT re-run: ``defense=repnoise_hft``)
    beta             -> ``beta``, the weight of the noise term (0.001 in both)
    harmful data     -> ``pools.align_compliant``, harmful answers to the alignment pool's own
                        prompts (the paper's paired data): the bundled data's compliant answers, or
                        on the hub data (``pairing: same_prompt``) unsafe BeaverTails answers to
                        alignment prompts, whose alignment side is an is_safe answer rather than a
                        written refusal; the first ``num_harmful`` pairs, read as the stream
                        ``"harmful"`` (one batch per micro-batch)
    harmless data    -> the alignment stage's own data

Paper / code discrepancies, decided here:
    naming            The main text's eq. 5 (L = l_stability + alpha l_noise - beta l_ascent) swaps
                      the names of the appendix algorithm and the official code
                      (``rep_noise_loss(beta=0.001, alpha=1)``). We use the code's: ``alpha`` on the
                      ascent term, ``beta`` on the noise term.
    ``mask``          Which harmful tokens the two terms see. The code masks the positions where the
                      paired harmful and harmless sequences differ. "response" (default): the harmful
                      answer's tokens (what differs in intent; robust to unpaired data).
                      "paired_diff": the code's rule with our pairs - the answer tokens that differ
                      from the refusal of the same prompt at the same position (tokens past the
                      refusal's end differ). Padding is never masked in (the code's fixed-length
                      padding lets pad tokens in where the two lengths differ). The Booster re-run
                      pairs unrelated harmful and alignment batches, so its mask covers nearly every
                      token, the harmful prompt included; not reproduced.
    ``norm_last_twice``  ``output_hidden_states``' last entry already passed the final norm and the
                      code applies the norm to every entry again, so the last lens reads
                      norm(norm(h_L)). True (default) reproduces that; False uses norm(h_L) (then the
                      last lens CE equals CE(final logits), counted twice).
    "+1" and log      As in the code: -alpha * log(l_ascent + 1), the +1 after dividing by L + 1.
    CE artifacts      The code's ``masked_token_ce_loss`` zeroes the logits at positions outside the
                      mask, so the first answer token is scored from all-zero logits (a constant log V,
                      no gradient), and it drops every label whose id is 0. Not reproduced: every
                      masked answer token is scored from its real logits.
    l_harmless        The code's harmless loss is the CE of the paired refusal, masked the same way;
                      here it is the stage's task loss over all alignment data, as in the HFT re-run
                      (which trains on its safety alignment batch).

A weight of 0 switches its term off (nothing computed); alpha = beta = 0 is plain SFT alignment.
Cost per step: one extra forward and backward over the harmful batch, plus L + 2 LM-head
projections at its answer tokens.

Memory: l_harmless and the harmful terms come from two separate forward passes, so the step
backwards each as soon as it exists (``training_step``): the gradient of their sum, but the
harmless pass's activations are freed before the harmful pass keeps its own, so the peak holds one
pass's activations instead of both.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from sbr_bench.data.formatting import IGNORE_INDEX, encode_pair
from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.models import base_model, decoder_layers
from sbr_bench.schema import NonNegativeFloat, PositiveFloat, PositiveInt


def mmd(source: torch.Tensor, target: torch.Tensor, kernel_num: int = 5, kernel_mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel Gaussian MMD (biased) between two equally sized sets of row vectors, in fp32.

    The bandwidth is the mean squared distance between distinct rows of both sets, divided by
    ``kernel_mul ** (kernel_num // 2)``, then multiplied by ``kernel_mul ** i`` per kernel; it is
    data, not a function of the parameters (no gradient flows through it), as in the official code.
    """
    total = torch.cat([source, target]).float()
    total = total - total.mean(dim=0, keepdim=True).detach()  # distances are shift-invariant; less cancellation
    n = total.shape[0]
    squared = (total * total).sum(dim=1)
    distance = (squared[:, None] + squared[None, :] - 2 * total @ total.T).clamp_min(0)
    distance = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=total.device), 0.0)
    bandwidth = distance.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    bandwidth = bandwidth.clamp_min(torch.finfo(torch.float32).tiny)  # all rows equal: kernels 1, MMD 0
    kernel = sum(torch.exp(-distance / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    b = source.shape[0]
    return (kernel[:b, :b] + kernel[b:, b:] - kernel[:b, b:] - kernel[b:, :b]).mean()


# Rows of the logit lens whose full-vocabulary logits exist at once (49152 columns for SmolLM2: 1024
# rows are 200 MB in fp32). Any value gives the same loss; it trades memory for larger matrix products.
LENS_CHUNK_ROWS = 1024


class LinearCrossEntropy(torch.autograd.Function):
    """``sum_r CE(x_r @ W^T, t_r)`` chunk by chunk of rows, gradients computed while each chunk's logits exist.

    The same value and gradients as ``F.cross_entropy(F.linear(x, W).float(), t, reduction="sum")``,
    without keeping any (rows, vocabulary) tensor for the backward pass: per chunk, the logits give
    the loss and ``softmax - onehot``, which gives d/dx (and d/dW when W trains) at once; the backward
    pass only scales them. The logits are taken in x's dtype and scored in fp32, as the reference does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.shape[0], chunk):
            rows, target = x[start : start + chunk], targets[start : start + chunk]
            logits = (rows @ weight.T).float()
            logsumexp = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (logsumexp.squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)).sum()
            dlogits = logits.sub_(logsumexp).exp_()  # softmax, in the logits' memory
            dlogits[torch.arange(len(target), device=x.device), target] -= 1
            dlogits = dlogits.to(x.dtype)
            grad_x[start : start + chunk] = dlogits @ weight
            if grad_w is not None:
                grad_w += (dlogits.T @ rows).float()
        ctx.save_for_backward(grad_x, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        grad_total = grad_total.to(grad_x.dtype)
        return grad_x * grad_total, None if grad_w is None else (grad_w * grad_total).to(grad_x.dtype), None, None


class RepNoise(Defense):
    """Representation Noising in the alignment stage; see the module docstring for the math and options."""

    stage = "align"
    manual_optimization = True  # one backward per pass, so that only one pass's activations are held
    plain_sft_at: ClassVar[dict] = {"alpha": 0, "beta": 0}  # both terms off (not computed): l_harmless alone
    passes_per_step = 2  # harmless batch + harmful batch with every layer's logit lens and MMD

    def __init__(
        self,
        alpha: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 0.001,
        mask: Literal["response", "paired_diff"] = "response",
        norm_last_twice: bool = True,
        num_harmful: PositiveInt | None = None,
        kernel_num: PositiveInt = 5,
        kernel_mul: PositiveFloat = 2.0,
    ):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mask = mask
        self.norm_last_twice = bool(norm_last_twice)
        self.num_harmful = num_harmful
        self.kernel_num = int(kernel_num)
        self.kernel_mul = float(kernel_mul)
        self.refusals: dict[tuple[int, ...], list[int]] = {}  # prompt ids -> refusal ids ("paired_diff")

    def check(self, pools) -> None:
        """The harmful stream must fit the pool; every harmful prompt needs its refusal for "paired_diff"."""
        available = len(pools.align_compliant)
        if self.num_harmful is not None and self.num_harmful > available:
            raise ConfigError(
                f"defense.num_harmful={self.num_harmful} but align_compliant holds {available} pairs; "
                f"use num_harmful <= {available} (or null)"
            )
        if self.mask == "paired_diff":
            refused = {p.prompt for p in pools.align_harmful}
            if any(p.prompt not in refused for p in self.harmful_pairs(pools)):
                raise ConfigError(
                    "defense.mask='paired_diff' needs a refusal in align_harmful for every harmful prompt "
                    "(hub data: data.beavertails.pairing=same_prompt)"
                )

    def harmful_pairs(self, pools):
        return pools.align_compliant[: self.num_harmful]

    def extra_data(self, pools):
        return {"harmful": self.harmful_pairs(pools)}

    def setup(self, module) -> None:
        """Check the architecture has what the terms read; tokenise the refusals for "paired_diff"."""
        self.check(module.pools)
        decoder = base_model(module.model).get_decoder()
        if not hasattr(decoder, "norm") or not all(hasattr(layer, "mlp") for layer in decoder_layers(module.model)):
            raise ConfigError(
                f"RepNoise reads a final `norm` and an `mlp` per decoder layer; {type(decoder).__name__} lacks one"
            )
        if self.mask == "paired_diff":
            self.refusals = {}
            for pair in module.pools.align_harmful:
                example = encode_pair(module.tokenizer, pair.prompt, pair.response, max_length=1 << 30)
                prompt = tuple(
                    t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE_INDEX
                )
                self.refusals[prompt] = example["input_ids"]

    def token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) bool: the harmful tokens the noise and ascent terms see."""
        answer = batch["labels"] != IGNORE_INDEX
        if self.mask == "response":
            return answer
        ids = batch["input_ids"]
        paired = torch.full_like(ids, -1)  # -1 never equals a token id: past the refusal's end is "different"
        for row, (row_ids, row_answer) in enumerate(zip(ids.tolist(), answer.tolist(), strict=True)):
            refusal = self.refusals[tuple(row_ids[: row_answer.index(True)])][: ids.shape[1]]
            paired[row, : len(refusal)] = torch.tensor(refusal, device=ids.device)
        return answer & (ids != paired)

    def noise_loss(self, activations: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Mean over layers of MMD(masked MLP output, equally masked N(0, I) noise), one T*d row per example."""
        weight = tokens.unsqueeze(-1).float()
        total = 0.0
        for output in activations:
            hidden = output.float() * weight
            noise = torch.randn_like(hidden) * weight
            total = total + mmd(hidden.flatten(1), noise.flatten(1), self.kernel_num, self.kernel_mul)
        return total / len(activations)

    def ascent_loss(self, model, hidden_states, batch, tokens) -> torch.Tensor:
        """[CE(final logits) + sum_i CE(lm_head(norm(h_i)))] / (L + 1) at the masked harmful tokens."""
        keep = tokens[:, 1:]  # position t predicts token t + 1
        targets = batch["input_ids"][:, 1:][keep]
        head = model.get_output_embeddings()
        norm = base_model(model).get_decoder().norm
        config = base_model(model).config

        def ce(logits: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float(), targets)

        def at_answer(h: torch.Tensor) -> torch.Tensor:
            return h[:, :-1][keep]  # gather first: the norm is per token, the LM head runs only here

        last = at_answer(hidden_states[-1])  # the decoder's output, after the final norm
        cap = getattr(config, "final_logit_softcapping", None)
        lens = [norm(at_answer(h)) for h in hidden_states[:-1]]
        lens.append(norm(last) if self.norm_last_twice else last)
        if cap or type(head) is not torch.nn.Linear or head.bias is not None:
            # The model's own logits are soft-capped in Gemma 2 (the code's logit lens is not), or the
            # head is not one plain matrix (an adapter on it): every CE from its logits, as written.
            last_logits = head(last)
            final = cap * torch.tanh(last_logits / cap) if cap else last_logits
            return (ce(final) + sum(ce(head(x)) for x in lens)) / len(hidden_states)
        # The final logits and every lens share the head and the targets: one chunked CE over all of
        # their rows, the (rows, vocabulary) logits never held for the backward pass.
        rows = torch.cat([last, *lens])
        total = LinearCrossEntropy.apply(rows, head.weight, targets.repeat(len(lens) + 1), LENS_CHUNK_ROWS)
        return total / len(targets) / len(hidden_states)  # the mean CE of each term, summed, / (L + 1)

    def training_step(self, module, batch):
        """``l_harmless`` on the stage's batch, then the harmful terms; each backwarded as soon as computed.

        The gradient is that of their sum. The two passes share no tensor, so the harmless graph can
        go before the harmful one is built. The harmful batch and the noise are drawn after the
        harmless pass, as in a single backward of the sum.
        """
        task = module.task_loss(batch)
        module.accumulate_backward(task)
        terms = self.harmful_terms(module)
        if terms:
            module.accumulate_backward(sum(terms.values()))
        return {"task": task.detach(), **{name: term.detach() for name, term in terms.items()}}

    def harmful_terms(self, module) -> dict[str, torch.Tensor]:
        """``{"noise": beta * l_noise, "ascent": -alpha * log(l_ascent + 1)}`` on the next harmful batch."""
        if self.alpha == 0 and self.beta == 0:
            return {}
        harmful = module.extra_batch("harmful")
        tokens = self.token_mask(harmful)
        model = module.model
        activations: list[torch.Tensor] = []

        def keep_output(_module, _inputs, output):
            activations.append(output[0] if isinstance(output, tuple) else output)  # MoE: (output, router logits)

        hooks = [layer.mlp.register_forward_hook(keep_output) for layer in decoder_layers(model)] if self.beta else []
        try:
            out = base_model(model).get_decoder()(
                input_ids=harmful["input_ids"],
                attention_mask=harmful["attention_mask"],
                use_cache=False,
                output_hidden_states=self.alpha > 0,
            )
        finally:
            for hook in hooks:
                hook.remove()
        terms = {}
        if self.beta:
            terms["noise"] = self.beta * self.noise_loss(activations, tokens)
        if self.alpha:
            terms["ascent"] = -self.alpha * torch.log(self.ascent_loss(model, out.hidden_states, harmful, tokens) + 1)
        return terms
