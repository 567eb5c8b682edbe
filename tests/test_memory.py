"""Crash-safety of the memory builds: a build killed with SIGKILL and rerun ends with the same store as an uninterrupted
build, and a rerun with everything present makes no LLM call. The LLM and embedder are deterministic stand-ins from
`mrrec.fakes` (the real models are exercised by the notebooks); a delay per answer gives the test time to kill the
build mid-way."""
import dataclasses, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from mrrec.core import stable_hash
from mrrec.fakes import HashEmbedder, ScriptedLLM
from mrrec.local_memory import LocalMemory, LocalMemoryConfig, build_local_memory, committed_users, local_fingerprint
from mrrec.global_memory import GlobalMemory, GlobalMemoryConfig, build_global_memory

TESTS_DIR = Path(__file__).resolve().parent
BRANDS, COLOURS, CATS = ['Acme', 'Borealis', 'Corvid', 'Dunmore'], ['navy', 'red', 'olive',
                                                                    'grey'], ['Hats', 'Kitchen', 'Garden']


def _answer(conversation, stage):
    "Deterministic answers derived from the prompt (a word it contains decides the content)."
    h = int(stable_hash(conversation[-1]['content'], n=6), 16)
    brand, colour = BRANDS[h % 4], COLOURS[(h // 4) % 4]
    if stage.endswith('aspects'):
        return ('```json\n{"category_level_personalization_aspects": [{"aspect": "Brand Reputation", '
                f'"description": "Trusted brands like {brand}."}}], "subcategory_level_personalization_aspects": '
                f'[{{"aspect": "Colour", "description": "Prefers {colour} tones."}}]}}\n```'
                if h % 5 else 'Sorry, I cannot help with that.')   # some answers are unusable: counted, not raised
    if stage.endswith('merge'):
        return '{"Brand Reputation": ["Trusted brands matter."], "Colour": ["Colour tones matter."]}'
    return f"Prefers {brand} items in {colour}. Rates durable items highly. Dislikes flimsy builds."


def fake_llm(delay: float = 0.0) -> ScriptedLLM:
    "A `ScriptedLLM` answering with `_answer`, `delay` seconds per answer; its model id is `fake-llm`."
    def reply(conversation, stage):
        time.sleep(delay)
        return _answer(conversation, stage)
    llm = ScriptedLLM(reply)
    llm.model_id = 'fake-llm'
    return llm


def fake_embedder() -> HashEmbedder: return HashEmbedder(dim=32, model_id='fake-embed')


def make_history(n_users: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        for t in range(int(rng.integers(3, 7))):
            c, b, col = CATS[int(rng.integers(3))], BRANDS[int(rng.integers(4))], COLOURS[int(rng.integers(4))]
            rows.append(dict(user_id=f'user{u:02d}', item_id=f'i{u}_{t}', category=c, timestamp=1000 + t,
                             rating=float(rng.integers(1, 6)), review_title='ok',
                             review_text=f'The {col} one from {b} works.', item_title=f'{b} {c} item',
                             item_text=f'{b} {col} {c.lower()} item'))
    return pd.DataFrame(rows)


def make_queries_and_pool(n: int = 12):
    pool = pd.DataFrame([{'item_id': f'p{c}{j}', 'category': c,
                          'metadata': f'{BRANDS[j % 4]} {COLOURS[j // 4 % 4]} {c.lower()} item {j}'}
                         for c in CATS for j in range(16)])
    queries = pd.DataFrame([{'qid': f'q{i}', 'user_id': f'user{i:02d}',
                             'query': f'a {CATS[i % 3].lower()} thing for use {i}', 'item_id': f'p{CATS[i % 3]}{i}',
                             'category': CATS[i % 3]} for i in range(n)])
    return queries, pool


def _build(kind: str, root: Path, llm) -> object:
    if kind == 'local':
        return build_local_memory(make_history(), llm, fake_embedder(), LocalMemoryConfig(user_batch=2), root,
                                  progress=False)
    q, pool = make_queries_and_pool()
    return build_global_memory(q, pool, llm, fake_embedder(),
                               GlobalMemoryConfig(n_queries=12, n_negatives=3, query_batch=2), root, seed=0,
                               progress=False)


def _snapshot(kind: str, root: Path) -> dict:
    "The content of a store (not its timings)."
    if kind == 'local':
        m = LocalMemory(root)
        man = {k: v for k, v in m.manifest.items() if k != 'accounting'}
        return {'entries': m.entries, 'emb': m.emb, 'summaries': m.summaries, 'baselines': m.baselines, 'manifest': man}
    g = GlobalMemory(root)
    man = {k: v for k, v in g.manifest.items() if k != 'accounting'}
    return {'memory': g.memory, 'table': g.table, 'vectors': g.vectors, 'manifest': man,
            'mined': pd.read_parquet(root / 'mined.parquet')}


def _committed(kind: str, root: Path) -> int:
    "Users (local) or mined queries (global) committed so far."
    if kind == 'local': return len(list((root / 'users').glob('[!.]*.parquet')))
    return len(list((root / 'mined').glob('*/[!.]*.json')))


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], pd.DataFrame): pd.testing.assert_frame_equal(a[k], b[k])
        elif isinstance(a[k], np.ndarray): np.testing.assert_array_equal(a[k], b[k])
        else: assert a[k] == b[k], k


@pytest.mark.parametrize('kind', ['local', 'global'])
def test_killed_build_resumes_to_the_same_store(tmp_path, kind):
    ref = tmp_path / 'ref'
    _build(kind, ref, fake_llm())
    total = _committed(kind, ref)

    crashed = tmp_path / 'crashed'
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS_DIR)!r})
        from pathlib import Path
        from test_memory import fake_llm, _build
        _build({kind!r}, Path({str(crashed)!r}), fake_llm(delay=0.2))
    """)
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _committed(kind, crashed) < 2 and proc.poll() is None and time.time() < deadline: time.sleep(0.05)
    assert proc.poll() is None, f"the build ended before it could be killed: {proc.communicate()[1].decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _committed(kind, crashed)
    assert 2 <= before < total, (before, total)              # killed mid-way: some, not all, committed
    assert not (crashed / 'manifest.json').exists()          # the consolidated store is only written at the end

    llm = fake_llm()
    rep = _build(kind, crashed, llm)
    done = rep.built if kind == 'local' else rep.mined
    assert done <= total - before + 2                        # committed work is not redone (a kill may land mid-commit)
    _assert_same(_snapshot(kind, ref), _snapshot(kind, crashed))
    assert not list(crashed.rglob('.*.tmp'))                 # no temporary file of the killed write is left

    again = fake_llm()
    rep2 = _build(kind, crashed, again)
    assert not again.calls and rep2.llm_prompts == 0        # everything present: no LLM call
    _assert_same(_snapshot(kind, ref), _snapshot(kind, crashed))


def test_global_changed_setting_replaces_stale_work(tmp_path):
    q, pool = make_queries_and_pool()
    build_global_memory(q,
                        pool,
                        fake_llm(),
                        fake_embedder(),
                        GlobalMemoryConfig(n_queries=6),
                        tmp_path,
                        seed=0,
                        progress=False)
    llm = fake_llm()
    rep = build_global_memory(q,
                              pool,
                              llm,
                              fake_embedder(),
                              GlobalMemoryConfig(n_queries=6, n_negatives=2),
                              tmp_path,
                              seed=0,
                              progress=False)
    assert rep.mined == 6 and llm.calls
    assert len(list((tmp_path / 'mined').iterdir())) == 1 and len(list((tmp_path / 'merged').iterdir())) == 1


def test_changed_setting_rebuilds_instead_of_mixing(tmp_path):
    h = make_history(4)
    build_local_memory(h, fake_llm(), fake_embedder(), LocalMemoryConfig(), tmp_path, progress=False)
    llm = fake_llm()
    rep = build_local_memory(h, llm, fake_embedder(), LocalMemoryConfig(chunk_max_words=5), tmp_path, progress=False)
    assert rep.built == 4 and llm.calls
    fp = local_fingerprint(LocalMemoryConfig(chunk_max_words=5), 'fake-llm', 'fake-embed')
    assert len(committed_users(tmp_path, fp)) == 4 and len(list((tmp_path / 'users').glob('*.parquet'))) == 4
    e = LocalMemory(tmp_path).entries
    assert e.loc[e.level != 'record', 'text'].str.split().str.len().max() <= 5   # chunks follow the new setting


def test_history_never_reaches_another_user(tmp_path):
    build_local_memory(make_history(6), fake_llm(), fake_embedder(), LocalMemoryConfig(), tmp_path, progress=False)
    m = LocalMemory(tmp_path, fake_embedder())
    for u in m.users:
        hits = m.retrieve(u, 'navy Acme hats', k=50)
        assert hits and all(h['entry_id'].startswith(f'{u}/') for h in hits)


# ------------------------------------------------ whose memory is built: the users the later stages read
from mrrec.core import load_profile
from mrrec.data import SPLIT_ORDER_SALT, DataConfig, plan_queries, seeded_query_order


def _split_queries(seed=0):
    "60 test, 10 validation, 40 training queries; most users have one query, a few have queries in two splits."
    users = [f'u{i}' for i in range(100)] + ['u3', 'u4', 'u5', 'u61', 'u62', 'u63', 'u64', 'u65', 'u66', 'u67']
    splits = ['test'] * 60 + ['val'] * 10 + ['train'] * 30 + ['train'] * 3 + ['test'] * 7
    return pd.DataFrame({'qid': range(len(users)), 'user_id': users, 'split': splits, 'query': 'q', 'item_id': 'i',
                         'category': 'c'})


def _head(q, split, n, seed):
    "The first `n` queries (0 = all) of a split in its seeded order."
    order = seeded_query_order(q[q.split == split], seed, SPLIT_ORDER_SALT[split])
    return order.head(n) if n else order


@pytest.mark.parametrize('seed', [0, 5])
@pytest.mark.parametrize('counts', [{'test': 16, 'train': 4, 'val': 0}, {'test': 8, 'train': 12, 'val': 2},
                                    {'test': 0, 'train': 3, 'val': 0}])
def test_memory_users_are_the_users_the_stages_sample(seed, counts):
    q = _split_queries()
    cfg = dataclasses.replace(load_profile('ci').section(DataConfig), eval_queries=counts['test'],
                              rl_train_queries=counts['train'], rl_val_queries=counts['val'], memory_user_cap=0)
    plan = plan_queries(q, cfg, seed)
    users = plan.memory_users
    assert len(users) == len(set(users))
    # every evaluated user has memory, and the evaluated queries are the same sample
    assert plan.test['has_local_memory'].all() and set(plan.test.user_id) <= set(users)
    assert sorted(plan.test.qid) == sorted(_head(q, 'test', counts['test'], seed).qid)
    for split, picked in (('train', plan.train), ('val', plan.val)):
        if not counts[split]: continue
        assert set(picked.user_id) <= set(users)                                 # every RL query's user has memory
        assert sorted(picked.qid) == sorted(_head(q, split, counts[split], seed).qid)   # the seeded prefix of the split
    capped = plan_queries(q, dataclasses.replace(cfg, memory_user_cap=5), seed)
    assert capped.memory_users == users[:5]    # the cap keeps the evaluated users first
    assert set(capped.test.user_id[capped.test.has_local_memory]) <= set(users[:5])


def test_query_plan_follows_the_profile():
    q = _split_queries()
    ci = load_profile('ci')
    cfg = ci.section(DataConfig)
    assert (cfg.eval_queries, cfg.rl_train_queries, cfg.rl_val_queries) == (ci.tables['data']['eval_queries'],
            ci.tables['data']['rl_train_queries'], ci.tables['data']['rl_val_queries'])
    plan = plan_queries(q, cfg, ci.seed)
    assert len(plan.test) == cfg.eval_queries and len(plan.train) == cfg.rl_train_queries
    assert set(plan.test.user_id) | set(plan.train.user_id) == set(plan.memory_users)   # memory for exactly those users
    assert set(plan_queries(q, cfg, ci.seed + 1).memory_users) != set(plan.memory_users)   # the seed picks the sample
    assert plan_queries(q, dataclasses.replace(cfg, memory_user_cap=3), ci.seed).memory_users == plan.memory_users[:3]
    paper = load_profile('paper')
    pcfg = paper.section(DataConfig)
    pplan = plan_queries(q, pcfg, paper.seed)
    assert pcfg.eval_queries == 0 and len(pplan.test) == (q.split == 'test').sum()   # the paper plans every test query
    assert set(q[q.split == 'test'].user_id) <= set(pplan.memory_users)
