"""nanochat pretraining, single device, single file: the file the agent edits.

    python train.py      # trains for the time budget, saves model.pt + model.json

The metric is not computed here: `python prepare.py --evaluate` rebuilds GPT from this file
and model.pt in a fresh process and scores it. Keep training under `if __name__ == "__main__"`,
keep `GPT(GPTConfig(**config))` constructible and `model(idx)` returning (B, T, vocab) logits.
"""

import os

os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from prepare import (  # noqa: E402
    DEVICE,
    MAX_SEQ_LEN,
    PROFILE,
    Tokenizer,
    make_dataloader,
    peak_memory_mb,
    time_budget,
)

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; no CLI flags)
# ---------------------------------------------------------------------------

# Size and batch per platform profile (prepare.py picks it; AUTORESEARCH_NANOCHAT_PROFILE
# overrides). GPU profiles share the original's model and 2**19 tokens per step; smaller cards
# reach it with more gradient accumulation (PROFILE.device_batch rows per micro-step).
#           depth  head_dim  windows  tokens/step  rows/micro-step
DEPTH, HEAD_DIM, WINDOW_PATTERN, TOTAL_BATCH_SIZE, DEVICE_BATCH_SIZE = {
    "h100": (8, 128, "SSSL", 2**19, PROFILE.device_batch),
    "consumer": (8, 128, "SSSL", 2**19, PROFILE.device_batch),
    "legacy": (8, 128, "SSSL", 2**19, PROFILE.device_batch),
    "mps": (4, 64, "L", 2**14, 32),
    "cpu": (2, 64, "L", 2**12, 16),
}[PROFILE.name]
ASPECT_RATIO = 64          # model_dim = depth * ASPECT_RATIO, rounded up to HEAD_DIM
SOFTCAP = 15.0             # logits = SOFTCAP * tanh(logits / SOFTCAP)
VE_GATE_CHANNELS = 32      # input channels of the per-head value-embedding gate

EMBEDDING_LR = 0.6         # token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004     # lm_head (AdamW)
MATRIX_LR = 0.04           # transformer matrices (Muon)
SCALAR_LR = 0.5            # per-layer residual / input scalars (AdamW)
WEIGHT_DECAY = 0.2         # cautious weight decay for Muon, decays linearly to 0
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0         # share of the time budget spent warming the LR up
WARMDOWN_RATIO = 0.5       # share of the time budget spent decaying the LR
FINAL_LR_FRAC = 0.0        # LR at the end, as a fraction of the peak
EXCLUDED_STEPS = 10        # first steps (compilation warm-up) do not count against the budget

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"


def norm(x):
    """RMSNorm without parameters."""
    return F.rms_norm(x, (x.size(-1),))


def has_ve(layer_idx, n_layer):
    """Value embeddings on alternating layers, the last layer always included."""
    return layer_idx % 2 == (n_layer - 1) % 2


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos + b * sin, b * cos - a * sin], dim=-1)


_USE_FLEX = PROFILE.attention == "flex"
if _USE_FLEX:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def window_mask(T, window, device):
    """Causal mask over the current key and the `window` keys before it (the original's FA3
    window_size=(window, 0)): a flex BlockMask, else a bool mask. Built once, in GPT.__init__,
    so the compiled forward has no graph break."""
    if _USE_FLEX:
        def mask_mod(b, h, q, kv):
            return (q >= kv) & (q - kv <= window)
        return create_block_mask(mask_mod, None, None, T, T, device=device)
    i = torch.arange(T, device=device)
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= window)


def attention(q, k, v, mask):
    """q, k, v: (B, H, T, D). Full causal attention (mask None), or a precomputed window."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if _USE_FLEX:
        return flex_attention(q, k, v, block_mask=mask)
    T = q.size(2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:T, :T])


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0 and config.n_head % config.n_kv_head == 0
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate = (nn.Linear(VE_GATE_CHANNELS, self.n_kv_head, bias=False)
                        if has_ve(layer_idx, config.n_layer) else None)

    def forward(self, x, ve, cos_sin, mask):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual, gated per head by the input
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(rotate(q, cos, sin)), norm(rotate(k, cos, sin))  # QK norm after rotary
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.n_kv_head < self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = attention(q, k, v, mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, mask):
        x = x + self.attn(norm(x), ve, cos_sin, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.windows = self._windows(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_ve(i, config.n_layer)})
        cos, sin = self._rotary(config.sequence_len * 10, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # window masks, built here (on the default device) and never inside forward
        device = self.cos.device
        masks = {w: window_mask(config.sequence_len, w, device)
                 for w in sorted(set(self.windows)) if w < config.sequence_len}
        self.masks = [masks.get(w) for w in self.windows]
        for w, m in masks.items():
            if isinstance(m, torch.Tensor):  # bool masks follow the model across .to()
                self.register_buffer(f"mask_{w}", m, persistent=False)

    @staticmethod
    def _windows(config):
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= {"S", "L"}
        long, short = config.sequence_len, config.sequence_len // 2
        sizes = [long if pattern[i % len(pattern)] == "L" else short for i in range(config.n_layer)]
        sizes[-1] = long  # the last layer always sees the whole context
        return sizes

    def _rotary(self, seq_len, head_dim, base=10000.0):
        device = self.transformer.wte.weight.device
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        dtype = PROFILE.torch_dtype
        return freqs.cos().to(dtype)[None, :, None, :], freqs.sin().to(dtype)[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound with std 1/sqrt(n_embd)
        nn.init.normal_(self.transformer.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2*sigmoid(0) = 1: neutral
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        if PROFILE.dtype == "bfloat16":  # embeddings are only looked up: keep them in bf16
            self.transformer.wte.to(dtype=torch.bfloat16)
            for ve in self.value_embeds.values():
                ve.to(dtype=torch.bfloat16)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token: 6 per matrix weight plus attention over each window."""
        embeds = self.transformer.wte.weight.numel() + sum(
            ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        h, d, T = self.config.n_head, self.config.n_embd // self.config.n_head, self.config.sequence_len
        attn = sum(12 * h * d * min(w, T) for w in self.windows)
        return 6 * (self.num_params() - embeds - scalars) + attn

    def _mask(self, i):
        m = self.masks[i]
        if isinstance(m, torch.Tensor):
            return getattr(self, f"mask_{self.windows[i]}")
        return m

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self._mask(i))
        logits = self.lm_head(norm(x)).float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)

    def setup_optimizer(self):
        dim = self.config.n_embd
        scale = (dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
        matrices = list(self.transformer.h.parameters())
        groups = [
            dict(kind="adamw", params=list(self.lm_head.parameters()), lr=UNEMBEDDING_LR * scale,
                 betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=list(self.transformer.wte.parameters()), lr=EMBEDDING_LR * scale,
                 betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=list(self.value_embeds.parameters()), lr=EMBEDDING_LR * scale,
                 betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=[self.resid_lambdas], lr=SCALAR_LR * 0.01,
                 betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=[self.x0_lambdas], lr=SCALAR_LR,
                 betas=(0.96, 0.95), eps=1e-10, weight_decay=0.0),
        ]
        for shape in sorted({p.shape for p in matrices}):
            groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape],
                               lr=MATRIX_LR, momentum=0.95, beta2=0.95, ns_steps=5,
                               weight_decay=WEIGHT_DECAY))
        assert sum(len(g["params"]) for g in groups) == len(list(self.parameters()))
        opt = MuonAdamW(groups)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return opt

# ---------------------------------------------------------------------------
# Optimizer: Muon for the transformer's matrices, AdamW for everything else
# ---------------------------------------------------------------------------

# Polar Express: per-iteration (a, b, c) of X <- a X + b (X X^T) X + c (X X^T)^2 X
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
ORTHO_DTYPE = torch.bfloat16 if PROFILE.dtype == "bfloat16" else torch.float32


def _compiled(fn):
    return torch.compile(fn, dynamic=False, fullgraph=True) if PROFILE.compile else fn


@_compiled
def adamw_step(p, grad, m, v, step, lr, beta1, beta2, eps, wd):
    p.mul_(1 - lr * wd)
    m.lerp_(grad, 1 - beta1)
    v.lerp_(grad.square(), 1 - beta2)
    denom = (v / (1 - beta2 ** step)).sqrt() + eps
    p.add_(m / denom * (-lr / (1 - beta1 ** step)))


@_compiled
def muon_step(grads, params, momentum_buf, second_buf, momentum, lr, wd, beta2, ns_steps, red_dim):
    """One Muon update of a stack of same-shaped matrices, in place."""
    # Nesterov momentum
    mom = momentum.to(grads.dtype)
    momentum_buf.lerp_(grads, 1 - mom)
    g = grads.lerp_(momentum_buf, mom)
    # Polar Express orthogonalization
    X = g.to(ORTHO_DTYPE)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = g.size(-2) > g.size(-1)
    for a, b, c in POLAR_EXPRESS[:ns_steps]:
        if tall:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    g = X
    # NorMuon: normalize per row (or column) by a running second moment, keep the total norm
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    n = g.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    second_buf.lerp_(v_mean.to(second_buf.dtype), 1 - beta2.to(second_buf.dtype))
    step = second_buf.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * n) * step.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step * (v_norm / v_norm_new.clamp_min(1e-10))).to(g.dtype)
    # cautious weight decay: only where the update and the weight agree in sign
    lr, wd = lr.to(g.dtype), wd.to(g.dtype)
    mask = (g * params) >= 0
    params.sub_(lr * g + lr * wd * params * mask)


class MuonAdamW(torch.optim.Optimizer):
    """Muon (Polar Express + NorMuon + cautious weight decay) and AdamW, by param group kind."""

    def __init__(self, groups):
        super().__init__(groups, defaults={})
        # 0-d CPU tensors: changing a value does not recompile the step functions
        self._t = {k: torch.tensor(0.0) for k in
                   ("step", "lr", "beta1", "beta2", "eps", "wd", "momentum")}

    def _adamw(self, group):
        t = self._t
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["m"] = torch.zeros_like(p)
                state["v"] = torch.zeros_like(p)
            state["step"] += 1
            t["step"].fill_(state["step"])
            t["lr"].fill_(group["lr"])
            t["beta1"].fill_(group["betas"][0])
            t["beta2"].fill_(group["betas"][1])
            t["eps"].fill_(group["eps"])
            t["wd"].fill_(group["weight_decay"])
            adamw_step(p, p.grad, state["m"], state["v"], t["step"], t["lr"], t["beta1"],
                       t["beta2"], t["eps"], t["wd"])

    def _muon(self, group):
        params = group["params"]
        state = self.state[params[0]]
        rows, cols = params[0].shape
        if not state:
            state["momentum"] = torch.zeros(len(params), rows, cols, dtype=params[0].dtype,
                                            device=params[0].device)
            second = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second"] = torch.zeros(second, dtype=params[0].dtype, device=params[0].device)
        red_dim = -1 if rows >= cols else -2
        grads = torch.stack([p.grad for p in params])
        stacked = torch.stack(params)
        t = self._t
        t["momentum"].fill_(group["momentum"])
        t["beta2"].fill_(group["beta2"])
        t["lr"].fill_(group["lr"] * max(1.0, rows / cols) ** 0.5)
        t["wd"].fill_(group["weight_decay"])
        muon_step(grads, stacked, state["momentum"], state["second"], t["momentum"], t["lr"],
                  t["wd"], t["beta2"], group["ns_steps"], red_dim)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw(group)
            else:
                self._muon(group)

# ---------------------------------------------------------------------------
# Schedules (progress = training seconds / budget)
# ---------------------------------------------------------------------------


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return frac + (1 - frac) * FINAL_LR_FRAC


def muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


def build_config(vocab_size):
    dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=DEPTH,
                     n_head=dim // HEAD_DIM, n_kv_head=dim // HEAD_DIM, n_embd=dim,
                     window_pattern=WINDOW_PATTERN)

# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main():
    t_start = time.time()
    budget = time_budget()
    seed = int(os.environ.get("AUTORESEARCH_SEED") or 42)
    torch.manual_seed(seed)
    torch.set_float32_matmul_precision("high")
    device = torch.device(DEVICE)
    autocast = torch.autocast(device_type=device.type, dtype=PROFILE.torch_dtype,
                              enabled=PROFILE.autocast)
    # fp16 (cards before Ampere) needs loss scaling; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=PROFILE.dtype == "float16")

    tokenizer = Tokenizer.from_directory()
    config = build_config(tokenizer.get_vocab_size())
    print(f"Profile: {PROFILE.name} ({PROFILE.reason})  config: {asdict(config)}", flush=True)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    num_params = model.num_params()
    flops_per_token = model.flops_per_token()
    tokens_per_micro = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_micro == 0
    accum = TOTAL_BATCH_SIZE // tokens_per_micro
    optimizer = model.setup_optimizer()
    fwd = torch.compile(model, dynamic=False) if PROFILE.compile else model
    loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
    x, y, epoch = next(loader)
    print(f"Params: {num_params:,}  grad accumulation: {accum}  budget: {budget:g}s", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        elif device.type == "mps":
            torch.mps.synchronize()

    step, train_time, smooth = 0, 0.0, 0.0
    report_every, next_report = max(budget / 40, 1e-9), 0.0
    t_train = time.time()
    while True:
        sync()
        t0 = time.time()
        for _ in range(accum):
            with autocast:
                loss = fwd(x, y)
            train_loss = loss.detach()
            scaler.scale(loss / accum).backward()
            x, y, epoch = next(loader)
        progress = min(train_time / budget, 1.0)
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        scaler.step(optimizer)
        scaler.update()
        model.zero_grad(set_to_none=True)
        loss_f = train_loss.item()
        if not math.isfinite(loss_f) or loss_f > 100:
            print(f"FAIL: training loss {loss_f} at step {step}", flush=True)
            raise SystemExit(1)
        sync()
        dt = time.time() - t0
        if step >= EXCLUDED_STEPS:
            train_time += dt
        smooth = 0.9 * smooth + 0.1 * loss_f
        debiased = smooth / (1 - 0.9 ** (step + 1))
        if step == 0:  # Python's GC stalls for long on big heaps: freeze what exists now
            gc.collect()
            gc.freeze()
            gc.disable()
        step += 1
        if train_time >= next_report:
            print(f"progress: {min(train_time / budget, 1.0):.3f} train_loss: {debiased:.4f} "
                  f"step: {step} lrm: {lrm:.2f} step_ms: {dt * 1000:.0f} epoch: {epoch}", flush=True)
            next_report = (train_time // report_every + 1) * report_every
        if step > EXCLUDED_STEPS and train_time >= budget:
            break

    counted = step - EXCLUDED_STEPS
    tokens_per_sec = counted * TOTAL_BATCH_SIZE / train_time if train_time > 0 else 0.0
    figures = {
        "training_seconds": round(train_time, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "startup_seconds": round(t_train - t_start, 1),
        "num_steps": step,
        "total_tokens": step * TOTAL_BATCH_SIZE,
        "tokens_per_sec": round(tokens_per_sec),
        "peak_vram_mb": round(peak_memory_mb(), 1),
        "num_params": num_params,
        "depth": DEPTH,
        "train_loss": round(debiased, 6),
    }
    if PROFILE.peak_flops:
        figures["mfu_percent"] = round(100 * flops_per_token * tokens_per_sec / PROFILE.peak_flops, 2)
    torch.save(model.state_dict(), "model.pt")
    with open("model.json", "w") as f:
        json.dump({"config": asdict(config), "profile": PROFILE.name, "training": figures}, f, indent=1)
    print("---")
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
