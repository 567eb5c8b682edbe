"""Item search checks that are better outside the notebook: wider bm25s vs rank-bm25 agreement, persistence, the
profile table, and the benchmark command end to end (subprocesses)."""
import numpy as np
import pandas as pd
import pytest
from mrrec.core import ConfigError, load_profile, read_json
from mrrec.retrieval import (BM25Index, DenseIndex, RankBM25Index, RetrievalConfig, SearchResult, bench_retrieval_main,
                             make_retriever, rankings_match, select_top_k, target_ranks)


def _corpus(seed, n_items=300, n_queries=40, n_words=150):
    rng = np.random.default_rng(seed)
    words = [f"t{j}" for j in range(n_words)]
    p = 1 / np.arange(1, n_words + 1) ** 1.2; p /= p.sum()
    docs = [' '.join(rng.choice(words, rng.integers(1, 30), p=p)) for _ in range(n_items)]
    docs[3] = docs[7] = docs[11]                       # exact duplicates: equal scores, ordered by row
    docs[5] = "the and of"                             # an item with no indexable word
    queries = [' '.join(rng.choice(words, rng.integers(1, 7), p=p)) for _ in range(n_queries)] + ["zzz unknown", ""]
    return docs, queries


@pytest.mark.parametrize('seed', [1, 2])
@pytest.mark.parametrize('variant,params', [('okapi', {}), ('okapi', {'k1': 2.0, 'b': 1.0}), ('okapi', {'b': 0.0}),
                                            ('bm25+', {}), ('bm25+', {'k1': 0.5, 'b': 0.3, 'delta': 0.25})])
@pytest.mark.parametrize('k', [1, 7, 400])
def test_bm25s_ranks_like_rank_bm25(seed, variant, params, k):
    docs, queries = _corpus(seed)
    fast = BM25Index(variant, **params).index(docs).search(queries, k=k)
    ref = RankBM25Index(variant, **params).index(docs).search(queries, k=k)
    ok = rankings_match(fast, ref)
    assert ok.all(), f"queries that rank differently: {np.flatnonzero(~ok).tolist()}"
    hit = fast.rows >= 0
    np.testing.assert_array_equal(hit, ref.rows >= 0)
    np.testing.assert_allclose(fast.scores[hit], ref.scores[hit], rtol=1e-5)
    assert not hit[-2:].any()                          # unknown words / empty query: nothing retrieved


def test_duplicates_tie_by_row_and_cut_keeps_lower_rows():
    docs = ["red shoe"] * 5 + ["blue hat"] * 20
    res = BM25Index().index(docs).search(["red shoe"], k=3)
    assert res.rows[0].tolist() == [0, 1, 2] and len(set(res.scores[0].tolist())) == 1
    ref = RankBM25Index().index(docs).search(["red shoe"], k=3)
    assert ref.rows[0].tolist() == [0, 1, 2]


def test_each_query_is_scored_on_its_own():
    docs, queries = _corpus(3, n_items=500, n_queries=200)
    idx = BM25Index('bm25+').index(docs)
    together = idx.search(queries, k=50)
    alone = SearchResult.concat([idx.search([q], k=50) for q in queries[::-1]])[::-1]
    np.testing.assert_array_equal(together.rows, alone.rows)
    np.testing.assert_array_equal(together.scores, alone.scores)


def test_bm25_save_load_mmap(tmp_path):
    docs, queries = _corpus(4)
    idx = BM25Index('bm25+', delta=0.7).index(docs, item_ids=[f"it{i}" for i in range(len(docs))])
    back = BM25Index.load(idx.save(tmp_path / 'bm25'), mmap=True)
    assert (back.variant, back.delta, back.item_ids[4]) == ('bm25+', 0.7, 'it4')
    a, b = idx.search(queries, k=20), back.search(queries, k=20)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    idx.save(tmp_path / 'bm25')                        # overwriting an existing index works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]   # no temporary folder left behind


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_dense_equals_brute_force_at_depth_1000():
    x, q = _unit(5000, 48, 0), _unit(30, 48, 1)
    res = DenseIndex.build(x, 'flat', batch_size=7).search_vectors(q, k=1000)
    s = q @ x.T
    for i in range(len(q)):
        rows, scores = select_top_k(np.arange(len(x)), s[i], 1000)
        # float32 sums in another order may swap near-equal neighbours: compare as rankings with a tolerance
        assert rankings_match(res[i], SearchResult(rows[None], scores[None]), rtol=1e-5, atol=1e-5).all()
    ranks = target_ranks(res, res.rows[:, 499])
    assert (ranks == 500).all()


@pytest.mark.parametrize('kind', ['hnsw', 'ivf'])
def test_ann_save_load_same_results(tmp_path, kind):
    x, q = _unit(4000, 32, 2), _unit(20, 32, 3)
    idx = DenseIndex.build(x, kind, seed=5)
    back = DenseIndex.load(idx.save(tmp_path / kind))
    np.testing.assert_array_equal(idx.search_vectors(q, k=50).rows, back.search_vectors(q, k=50).rows)


def test_ivf_is_seeded():
    x, q = _unit(4000, 32, 2), _unit(20, 32, 3)
    a = DenseIndex.build(x, 'ivf', seed=1, threads=1).search_vectors(q, k=30, )
    b = DenseIndex.build(x, 'ivf', seed=1, threads=1).search_vectors(q, k=30)
    np.testing.assert_array_equal(a.rows, b.rows)


def test_profile_table_is_checked(tmp_path):
    for name in ('ci', 'demo', 'paper'):
        cfg = load_profile(name).section(RetrievalConfig)
        assert cfg.top_k == 1000 and cfg.retriever in ('dense', 'bm25')
    bad = tmp_path / 'bad.toml'
    bad.write_text('name = "bad"\nseed = 0\ndescription = "x"\n[retrieval]\nbm25_variant = "bm25l"\n')
    with pytest.raises(ConfigError, match=r"\[retrieval\] bm25_variant: 'bm25l' is not one of"):
        load_profile(bad).section(RetrievalConfig)
    bad.write_text('name = "bad"\nseed = 0\ndescription = "x"\n[retrieval]\ntop_k = "1000"\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        load_profile(bad).section(RetrievalConfig)


def test_registry_builds_the_bm25_pair_alike():
    docs, queries = _corpus(6)
    pool = pd.DataFrame({'item_id': [f"p{i}" for i in range(len(docs))], 'category': 'c', 'metadata': docs})
    cfg = RetrievalConfig(bm25_variant='bm25+')
    a = make_retriever('bm25', pool, cfg).search(queries, k=25)
    b = make_retriever('bm25-rank', pool, cfg).search(queries, k=25)
    assert rankings_match(a, b).all()


def test_benchmark_command_small(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = bench_retrieval_main(['--items', '3000', '--queries', '120', '--compare-items', '2000', '--rank-queries', '6',
                               '--dim', '16', '--quiet', '--json', str(out)])
    assert rc == 0
    figures = read_json(out)
    cmp = figures['compare']
    assert cmp['rank_bm25']['queries'] == 6 and cmp['rank_bm25']['same_ranking'] == 6
    assert cmp['speedup'] > 1
    parts = {p['part']: p for p in figures['parts']}
    assert parts['bm25s']['items'] == 3000 and parts['faiss-flat']['dim'] == 16
    assert all(p['peak_rss_gib'] > 0 and p['search_s'] > 0 for p in parts.values())
    printed = capsys.readouterr().out
    assert 'random L2-normalised float32 vectors' in printed and 'SynthC4 item text and queries (synthetic)' in printed
    with pytest.raises(SystemExit):
        bench_retrieval_main(['--parts', 'nope'])
