"""
Tests for model.py: each building block against a direct torch reference, the attention switch, the ablations,
the KV cache against no-cache generation, checkpoints, and the counting helpers.

    python -m pytest tests/test_model.py -v
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import model as M


def tiny(**kw):
    args = dict(vocab_size=97, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64, rope_theta=10000.0)
    args.update(kw)
    torch.manual_seed(0)
    return M.TransformerLM(**args)


def test_linear_and_embedding_init():
    torch.manual_seed(0)
    lin = M.Linear(300, 500)
    std = math.sqrt(2 / 800)
    assert lin.weight.shape == (500, 300)
    assert abs(lin.weight.std().item() - std * 0.88) < 0.01  # a normal cut at 3 sigma keeps ~0.986 of its std
    assert lin.weight.abs().max() <= 3 * std + 1e-6
    x = torch.randn(2, 3, 300)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight))
    emb = M.Embedding(1000, 64)
    assert emb.weight.shape == (1000, 64) and emb.weight.abs().max() <= 3
    ids = torch.randint(0, 1000, (4, 7))
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight))


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = M.RMSNorm(16)
    norm.weight.data = torch.randn(16)
    x = torch.randn(3, 5, 16)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_swiglu_and_default_d_ff():
    torch.manual_seed(0)
    ffn = M.SwiGLU(16, 48)
    x = torch.randn(2, 4, 16)
    ref = F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)
    torch.testing.assert_close(ffn(x), ref)
    assert M.ModelConfig(d_model=512).d_ff == 1344
    assert M.ModelConfig(d_model=768).d_ff == 2048
    assert M.ModelConfig(d_model=512, ffn='silu').d_ff == 2048


def test_rope_matches_complex_rotation():
    d_k, T, theta = 16, 12, 10000.0
    rope = M.RotaryPositionalEmbedding(theta, d_k, max_seq_len=64)
    x = torch.randn(2, 3, T, d_k)
    pos = torch.randint(0, 64, (T,))
    # adjacent pairs as complex numbers, multiplied by e^{i pos theta^(-2j/d)}
    xc = torch.view_as_complex(x.reshape(2, 3, T, d_k // 2, 2).contiguous())
    freqs = theta ** (-torch.arange(0, d_k, 2).float() / d_k)
    rot = torch.polar(torch.ones(T, d_k // 2), pos[:, None].float() * freqs[None, :])
    ref = torch.view_as_real(xc * rot).reshape(2, 3, T, d_k)
    torch.testing.assert_close(rope(x, pos), ref, atol=1e-5, rtol=1e-5)
    # batched positions of another shape broadcast too
    pos_b = torch.randint(0, 64, (2, 1, T))
    out = rope(x, pos_b)
    torch.testing.assert_close(out[1], rope(x[1], pos_b[1, 0]))
    assert 'cos_cached' not in rope.state_dict()


@pytest.mark.parametrize('B', [4, 3])  # 4 = num_heads: (B, T) positions lined up with the heads gave wrong outputs
def test_attention_takes_per_sequence_positions(B):
    """The course's adapter passes token_positions (batch, seq) to the attention module itself: row b of the output
    is the module run on sequence b alone with its own (seq,) positions."""
    torch.manual_seed(0)
    cfg = M.ModelConfig(d_model=32, num_heads=4, context_length=32, attn_impl='reference')
    attn, rope = M.CausalMultiHeadSelfAttention(cfg), M.RotaryPositionalEmbedding(10000.0, 8, max_seq_len=32)
    x, pos = torch.randn(B, 6, 32), torch.stack([torch.randperm(32)[:6] for _ in range(B)])
    out = attn(x, rope=rope, token_positions=pos)
    for b in range(B):
        torch.testing.assert_close(out[b], attn(x[b:b + 1], rope=rope, token_positions=pos[b])[0])


def test_softmax_and_attention_match_torch():
    x = torch.randn(4, 10) * 1000  # large values: must not overflow
    torch.testing.assert_close(M.softmax(x, dim=-1), torch.softmax(x, dim=-1))
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(M.scaled_dot_product_attention(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)


def test_cross_entropy_stable_and_matches_torch():
    logits = torch.randn(3, 5, 11) * 1000
    targets = torch.randint(0, 11, (3, 5))
    ref = F.cross_entropy(logits.view(-1, 11), targets.view(-1))
    out = M.cross_entropy(logits, targets)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref)
    targets[0] = -100
    torch.testing.assert_close(M.cross_entropy(logits, targets), F.cross_entropy(logits.view(-1, 11), targets.view(-1)))


def test_parameter_names_follow_the_course():
    names = set(tiny().state_dict())
    for n in ['token_embeddings.weight', 'layers.0.attn.q_proj.weight', 'layers.0.attn.k_proj.weight',
              'layers.0.attn.v_proj.weight', 'layers.0.attn.output_proj.weight', 'layers.0.ln1.weight',
              'layers.0.ln2.weight', 'layers.1.ffn.w1.weight', 'layers.1.ffn.w2.weight', 'layers.1.ffn.w3.weight',
              'ln_final.weight', 'lm_head.weight']:
        assert n in names, n


def test_attention_impls_agree():
    model = tiny(attn_impl='reference')
    x = torch.randint(0, 97, (2, 20))
    ref = model(x)
    assert ref.shape == (2, 20, 97)
    for impl in ['sdpa']:
        other = tiny(attn_impl=impl)
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other(x), ref, atol=1e-5, rtol=1e-5)


def test_attention_is_causal():
    model = tiny()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    torch.testing.assert_close(model(x)[:, :10], model(y)[:, :10])


@pytest.mark.parametrize('opts', [dict(norm='none'), dict(post_norm=True), dict(pos_emb='nope'),
                                  dict(ffn='silu', d_ff=None), dict(tie_embeddings=True), dict(qk_norm=True),
                                  dict(num_kv_heads=2), dict(ffn='relu2', d_ff=None), dict(zero_init_proj=True),
                                  dict(logit_softcap=5.0)])
def test_ablations_and_options_run_and_learn(opts):
    model = tiny(**opts)
    x = torch.randint(0, 97, (4, 16))
    loss = model(x[:, :-1], targets=x[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    if opts.get('tie_embeddings'):
        assert model.lm_head.weight is model.token_embeddings.weight
    if opts.get('num_kv_heads'):
        assert model.layers[0].attn.k_proj.weight.shape == (16, 32)
    assert M.count_parameters(model) == M.count_parameters(model.config)


def test_nope_has_no_position_information():
    model = tiny(pos_emb='nope', num_layers=1)
    # without positions, in one layer, the last token's output depends only on the set of tokens, not their order
    # (deeper layers see earlier positions' causal prefixes, which do depend on order)
    x = torch.tensor([[5, 6, 7, 8]])
    y = torch.tensor([[7, 5, 6, 8]])
    torch.testing.assert_close(model(x)[:, -1], model(y)[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('opts', [dict(attn_impl='reference'), dict(attn_impl='sdpa', num_kv_heads=2, qk_norm=True)])
def test_kv_cache_generation_equals_no_cache_greedy(opts):
    model = tiny(**opts).eval()
    prompts = [[1, 2, 3, 4, 5, 6], [7], [9, 10, 11]]  # different lengths in one batch
    cached = model.generate(prompts, max_new_tokens=12, temperature=0)
    naive = model.generate(prompts, max_new_tokens=12, temperature=0, use_cache=False)
    assert cached == naive
    assert [len(r) for r in cached] == [12, 12, 12]
    # a second call reuses the preallocated cache and gives the same answer
    assert model.generate(prompts, max_new_tokens=12, temperature=0) == cached
    # one prompt alone gives the same as inside the batch: the padding is invisible
    assert model.generate([prompts[1]], max_new_tokens=12, temperature=0)[0] == cached[1]


def test_cached_logits_match_full_forward():
    model = tiny().eval()
    x = torch.randint(0, 97, (2, 12))
    full = model(x)
    cache = M.KVCache(2, 2, 4, 16, 8)
    with torch.no_grad():
        first = model(x[:, :5], kv_cache=cache)
        steps = [model(x[:, t:t + 1], kv_cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([first] + steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_pos() == 12


def test_sampling_eos_seed_top_p():
    model = tiny().eval()
    a = model.generate([[1, 2]], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    b = model.generate([[1, 2]], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    assert a == b
    greedy = model.generate([[1, 2]], max_new_tokens=10, temperature=0)[0]
    eos = greedy[3]
    stopped = model.generate([[1, 2]], max_new_tokens=10, temperature=0, eos_id=eos)[0]
    assert stopped == greedy[:greedy.index(eos) + 1]
    # top_p tiny keeps only the most likely token: sampling becomes greedy
    assert model.generate([[1, 2]], max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=5)[0] == greedy
    with pytest.raises(ValueError, match='context_length'):
        model.generate([[1] * 30], max_new_tokens=10)


def test_context_too_long_is_clear():
    model = tiny()
    with pytest.raises(AssertionError, match='context_length'):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_checkpoint_round_trip(tmp_path):
    model = tiny(qk_norm=True)
    path = tmp_path / 'ckpt.pt'
    torch.save({'model': model.state_dict(), 'model_args': M.model_args_from(model)}, path)
    loaded = M.TransformerLM.from_checkpoint(str(path))
    x = torch.randint(0, 97, (2, 8))
    torch.testing.assert_close(loaded(x), model(x))
    torch.save({'model': model.state_dict(), 'model_args': {**M.model_args_from(model), 'd_model': 64}}, path)
    with pytest.raises(RuntimeError):
        M.TransformerLM.from_checkpoint(str(path))


def test_bad_config_values():
    with pytest.raises(ValueError, match='attn_impl'):
        M.ModelConfig(attn_impl='fast')
    with pytest.raises(ValueError, match='divisible'):
        M.ModelConfig(d_model=100, num_heads=16)


def test_flops_and_mfu_formula():
    cfg = M.ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344)
    n = M.count_parameters(cfg)
    # 4 layers x (4 d^2 attention + 3 d d_ff SwiGLU + 2 d norms) + final norm + lm_head
    assert n == 4 * (4 * 512 * 512 + 3 * 512 * 1344 + 2 * 512) + 512 + 10000 * 512
    assert M.flops_per_token(cfg) == 6 * n + 12 * 4 * 512 * 256
    assert M.estimate_mfu(cfg, 1e6) == pytest.approx(M.flops_per_token(cfg) * 1e6 / 989e12)


def test_flash_impl_matches_sdpa_forward_and_backward():
    """attn_impl='flash' (flash_attn.py's Triton kernel; on a CPU through TRITON_INTERPRET=1, set in conftest.py)."""
    pytest.importorskip('flash_attn')
    ref = tiny(num_layers=1, num_heads=2, attn_impl='sdpa')  # head dim 16: a size the kernel supports
    flash = tiny(num_layers=1, num_heads=2, attn_impl='flash')
    flash.load_state_dict(ref.state_dict())
    x = torch.randint(0, 97, (2, 20))
    ref(x, targets=x).backward()
    flash(x, targets=x).backward()
    torch.testing.assert_close(flash(x), ref(x), atol=1e-5, rtol=1e-5)
    for p, q in zip(flash.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_forward_loss_matches_readable_cross_entropy():
    # the fast path (torch's fused cross-entropy) and the readable one give the same loss, with ignored targets too
    torch.manual_seed(0)
    for impl in ('sdpa', 'reference'):
        model = M.TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=1, num_heads=2, attn_impl=impl)
        x = torch.randint(0, 50, (2, 16))
        y = torch.randint(0, 50, (2, 16))
        y[0, :3] = -100
        torch.testing.assert_close(model(x, targets=y), M.cross_entropy(model(x), y))


@pytest.mark.parametrize('dtype, cap', [(torch.float32, 0.0), (torch.bfloat16, 0.0), (torch.float32, 15.0),
                                        (torch.bfloat16, 15.0)])
def test_fused_linear_cross_entropy_matches_torch(dtype, cap, monkeypatch):
    """The GPU training loss (Triton; on a CPU through TRITON_INTERPRET=1, set in conftest.py): loss and both
    gradients against F.cross_entropy, with ignored targets, a vocabulary that is not a multiple of the column
    block (ragged last block), a row whose logits are huge (the log-sum-exp must not overflow) and an upstream
    gradient != 1 (the backward scales by it); with a soft cap, against cross_entropy(cap * tanh(logits / cap))."""
    if M.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(M, 'FUSED_CE_BLOCK', 64)  # several blocks per row
    torch.manual_seed(0)
    N, C, V = 24, 16, 203
    h = torch.randn(N, C).to(dtype).requires_grad_()
    w = torch.randn(V, C).to(dtype).requires_grad_()
    with torch.no_grad():
        h[5] *= 300  # logits of order 1e3: exp() overflows without the max subtraction
    y = torch.randint(0, V, (N,))
    y[[2, 7]] = -100
    loss = M.FusedLinearCrossEntropy.apply(h, w, y, -100, cap)
    (2.5 * loss).backward()
    gh, gw = h.grad, w.grad
    h.grad = w.grad = None
    logits = (h @ w.t()).float()  # bf16 logits, like the kernel's input
    ref = F.cross_entropy(cap * torch.tanh(logits / cap) if cap else logits, y)
    (2.5 * ref).backward()
    assert torch.isfinite(loss)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(gh, h.grad, **tol)
    torch.testing.assert_close(gw, w.grad, **tol)
    assert gh[2].abs().sum() == 0 and gh[7].abs().sum() == 0  # ignored rows get no gradient


SM90_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import model as M
sig = {'X': '*bf16', 'stride_x': 'i64', 'Y': '*i64', 'Loss': '*fp32', 'Inv_n': '*fp32', 'ignore_index': 'i32',
       'V': 'constexpr', 'BLOCK': 'constexpr', 'CAP': 'constexpr'}
for cap in (0.0, 15.0):
    k = triton.compile(ASTSource(M._cross_entropy_kernel, sig, {'V': 16384, 'BLOCK': 4096, 'CAP': cap}),
                       target=GPUTarget('cuda', 90, 32), options={'num_warps': 8})
    assert 'cubin' in k.asm
print('ok')
"""


def test_fused_loss_kernel_compiles_for_sm90(tmp_path):
    """The interpreter runs the kernel as Python; this compiles it as the GPU would (Triton's front end, PTX, ptxas
    for an H100), with and without the soft cap: constexpr branches and ops the interpreter forgives fail here.
    In a child process without TRITON_INTERPRET and with an empty cache."""
    import subprocess
    import sys
    if M.triton is None or not sys.platform.startswith('linux'):
        pytest.skip("needs triton's CUDA backend (Linux wheels)")
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(M.__file__))))
    r = subprocess.run([sys.executable, '-c', SM90_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


def test_model_fused_loss_path_matches_default():
    """TransformerLM._fused_loss (what forward(idx, targets) uses on CUDA) gives the default path's loss and
    gradients, including through autocast's casts, a tied lm_head and a soft cap."""
    if M.triton is None:
        pytest.skip("triton is not installed")
    for kw in ({}, {'tie_embeddings': True}, {'logit_softcap': 2.0}):
        model = tiny(**kw)
        x, y = torch.randint(0, 97, (2, 20)), torch.randint(0, 97, (2, 20))
        y[1, :4] = -100
        ref = model(x, targets=y)
        ref.backward()
        ref_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        seen = []
        hook = model.ln_final.register_forward_hook(lambda mod, inp, out: seen.append(out))
        model(x)  # the same forward, up to ln_final's output h
        hook.remove()
        h = seen[0]
        loss = model._fused_loss(h, y, model.config.logit_softcap)
        loss.backward()
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        for g, p in zip(ref_grads, model.parameters()):
            torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # the cast branch: bf16 operands, float32 master weights
        loss = model._fused_loss(h.detach(), y, model.config.logit_softcap)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 0.05


def test_lowp_residual_keeps_the_stream_in_the_autocast_dtype():
    """lowp_residual: under bf16 autocast every block sees (and returns) a bf16 residual stream instead of float32;
    the loss stays close to the float32-stream one and the embedding's gradient is still float32."""
    model = tiny()
    x, y = torch.randint(0, 97, (2, 20)), torch.randint(0, 97, (2, 20))
    dtypes = []
    hook = model.layers[1].register_forward_hook(lambda mod, inp, out: dtypes.append((inp[0].dtype, out.dtype)))
    losses = {}
    for lowp in (False, True):
        model.lowp_residual = lowp
        with torch.autocast('cpu', dtype=torch.bfloat16):
            losses[lowp] = model(x, targets=y)
        losses[lowp].backward()
        assert model.token_embeddings.weight.grad.dtype == torch.float32
        model.zero_grad()
    hook.remove()
    assert dtypes == [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]
    assert abs(losses[True].item() - losses[False].item()) < 0.05
    model.lowp_residual = True  # no autocast: no effect, float32 throughout
    torch.testing.assert_close(model(x, targets=y), tiny()(x, targets=y))


def test_relu2_zero_init_and_softcap():
    """ffn='relu2' is w2(relu(w1 x)^2) with d_ff = 4 d_model; zero_init_proj makes every block the identity at first;
    logit_softcap bounds the logits by cap tanh(z / cap), and the loss is the cross-entropy of the capped logits."""
    torch.manual_seed(0)
    ffn = M.MLP(16, 64, act='relu2')
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(ffn(x), F.linear(F.relu(F.linear(x, ffn.w1.weight)) ** 2, ffn.w2.weight))
    assert M.ModelConfig(d_model=512, ffn='relu2').d_ff == 2048
    model = tiny(zero_init_proj=True, num_layers=2)
    idx = torch.randint(0, 97, (2, 10))
    assert all(not layer.attn.output_proj.weight.any() and not layer.ffn.w2.weight.any() for layer in model.layers)
    plain = model.lm_head(model.ln_final(model.token_embeddings(idx)))  # the blocks add nothing yet
    torch.testing.assert_close(model(idx), plain)
    capped = tiny(logit_softcap=2.0)
    ref = tiny()
    logits = capped(idx)
    assert logits.abs().max() < 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(ref(idx) / 2.0))
    torch.testing.assert_close(capped(idx, targets=idx), F.cross_entropy(logits.flatten(0, 1), idx.flatten()))
    with pytest.raises(ValueError, match='ffn'):
        M.ModelConfig(ffn='gelu')


def test_copy_of_model_alone_runs_main(tmp_path):
    """Issue 29: model.py copied into an empty folder (no configurator.py, no repo on the path) imports quietly and its
    main() runs: nanoGPT's model.py needs only torch, and so does ours."""
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(root, 'model.py'), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', 'import model; model.main()'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'parameters' in r.stdout and sorted(os.listdir(tmp_path)) in (['model.py'], ['__pycache__', 'model.py'])

