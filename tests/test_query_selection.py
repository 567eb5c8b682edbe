"""The query sample is chosen after the history join (issue 13 item 3): eligible = target in the pool and at least
`[data] min_history` interactions before the query, then `max_queries` by stable hash; the counts of each step are in
the manifest (`query_selection`), beside Table 5, instead of an assertion. On the real-format samples and on SynthC4."""
import dataclasses

import pandas as pd
import pytest

from mrrec.core import ConfigError, load_profile, start_run
from mrrec.data import DataConfig, data_path, prepare_data, sample_queries

SAMPLES = data_path('data/samples')
REAL = DataConfig(source='c4', c4_queries_path=str(SAMPLES / 'amazon_c4/test.csv'),
                  c4_pool_path=str(SAMPLES / 'amazon_c4/sampled_item_metadata_1M.jsonl'),
                  reviews_dir=str(SAMPLES / 'amazon_reviews_2023/raw/review_categories'),
                  meta_dir=str(SAMPLES / 'amazon_reviews_2023/raw/meta_categories'), split_fractions=(0.5, 0.0, 0.5))


def steps(bundle) -> pd.DataFrame:
    return pd.DataFrame(bundle.manifest['query_selection']).set_index('step')


def test_real_samples_select_after_the_join(tmp_path):
    every = prepare_data(start_run('paper', out=tmp_path / 'all', seed=0), REAL, progress=False)
    assert every.queries.n_history.tolist() == [3, 1, 0, 2]          # min_history 0: the old behaviour
    s = steps(every)
    assert s.loc['read', 'without_own_review'] == 1 and s.loc['selected', 'queries'] == 4
    rewritten = []
    def rewrite(q):
        rewritten.append(len(q)); return q.assign(query=q['query'].str.upper(), simplify_status='ok')
    cfg = dataclasses.replace(REAL, min_history=1, max_queries=2, rewrite_queries=True)
    b = prepare_data(start_run('paper', out=tmp_path / 'sel', seed=0), cfg, progress=False, rewrite=rewrite)
    s = steps(b)
    assert s.loc[['read', 'in the pool', 'eligible', 'selected'], 'queries'].tolist() == [4, 4, 3, 2]
    assert s.loc['eligible', 'without_own_review'] == 0                # no own review, no cut-off, no history
    eligible = every.queries[every.queries.n_history >= 1]
    assert b.queries.qid.tolist() == sample_queries(eligible, 2, 0).qid.tolist()   # the hash runs over the eligible
    assert (b.queries.n_history >= 1).all() and set(b.histories.qid) == set(b.queries.qid)
    assert s.loc['selected', 'interactions'] == len(b.histories) == b.queries.n_history.sum()
    assert rewritten == [2]                                            # only the selected are rewritten (App. A)
    assert (b.queries['query'] == b.queries['query_detailed'].str.upper()).all()
    assert s.loc['paper (Table 5)', ['queries', 'interactions']].tolist() == [6096, 577376]


def test_synthc4_selection_by_history_length(tmp_path):
    small = DataConfig(n_items=900, n_queries=30)
    every = prepare_data(start_run('ci', out=tmp_path / 'all', seed=0), small, progress=False)
    cut = int(every.queries.n_history.median())
    b = prepare_data(start_run('ci', out=tmp_path / 'sel', seed=0), dataclasses.replace(small, min_history=cut),
                     progress=False)
    s = steps(b)
    want = int((every.queries.n_history >= cut).sum())
    assert 0 < want < len(every.queries)
    assert s.loc[['read', 'eligible', 'selected'], 'queries'].tolist() == [len(every.queries), want, want]
    assert (b.queries.n_history >= cut).all()
    assert s.loc['selected', 'interactions_per_query'] == round(b.queries.n_history.mean(), 2)
    assert s.loc['selected', 'interactions_per_query'] > steps(every).loc['selected', 'interactions_per_query']


def test_min_history_0_keeps_the_data_signature(tmp_path):
    "A profile that does not set min_history keeps the data of runs made before the key existed."
    run = start_run('ci', out=tmp_path / 'run', seed=0)
    small = DataConfig(n_items=900, n_queries=30)
    prepare_data(run, small, progress=False)
    from mrrec.core import read_json
    sig = read_json(run.data / 'data_manifest.json')['signature']
    assert 'min_history' not in sig
    prepare_data(run, dataclasses.replace(small, min_history=1), progress=False)
    assert read_json(run.data / 'data_manifest.json')['signature']['min_history'] == 1


def test_min_history_is_checked_and_stated_for_the_paper():
    with pytest.raises(ConfigError, match='min_history must be an integer >= 0'):
        DataConfig(min_history=-1)
    paper = load_profile('paper').section(DataConfig)
    assert paper.min_history >= 1 and paper.max_queries == 6096
