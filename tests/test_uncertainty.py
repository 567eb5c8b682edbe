"""Uncertainty of the evaluation (issue 14): bootstrap intervals on every metric, paired differences with verdicts,
and the results section first in the run's report."""
import numpy as np
import pandas as pd
import pytest

from mrrec.core import start_run, write_report, write_table
from mrrec.eval import experiment_table, t1_paired_differences
from mrrec.experiments import RowSpec, experiment_specs
from mrrec.metrics import (NOT_MEASURED, VERDICTS, bootstrap_ci, ci_verdict, paired_comparison, paired_difference,
                           recall_at_k)


def _results(seed=0, n=200):
    "Per-query ranks of two settings on the same queries: 'good' finds the target near the top, 'bad' rarely."
    rng = np.random.default_rng(seed)
    good = np.where(rng.random(n) < 0.8, rng.integers(1, 50, n), 0)
    bad = np.where(rng.random(n) < 0.2, rng.integers(1, 50, n), 0)
    q = [str(i) for i in range(n)]
    return pd.DataFrame({'setting': ['mrrec'] * n + ['llm_none'] * n, 'qid': q + q, 'category': 'C',
                         'rank': np.r_[good, bad]})


def test_paired_difference_is_above_zero_when_a_clearly_beats_b():
    r = _results()
    a, b = (recall_at_k(r.loc[r.setting == s, 'rank'], 100) for s in ('mrrec', 'llm_none'))
    d = paired_difference(a, b, n_boot=1000, seed=0)
    assert d['n'] == 200 and d['lo'] > 0 and d['lo'] <= d['diff'] <= d['hi']
    assert d['diff'] == pytest.approx(a.mean() - b.mean())
    assert paired_difference(a, b, 1000, seed=0) == d                        # deterministic for a seed
    assert paired_comparison(r, 'mrrec', 'llm_none', n_boot=500)['verdict'] == 'holds'
    assert paired_comparison(r, 'llm_none', 'mrrec', n_boot=500)['verdict'] == 'does not hold'


def test_verdict_strings():
    assert VERDICTS == ('holds', 'does not hold', 'cannot tell at this size')
    assert [ci_verdict(0.01, 0.2), ci_verdict(-0.3, -0.01), ci_verdict(-0.1, 0.1)] == list(VERDICTS)
    assert ci_verdict(0.0, 0.2) == 'cannot tell at this size'                  # touching 0 is not above it
    assert ci_verdict(np.nan, 0.2) == ci_verdict(0.1, np.nan) == 'cannot tell at this size'
    assert np.isnan(bootstrap_ci([0.3], 100, 0)).all()
    assert paired_comparison(_results(), 'mrrec', 'llm_naive')['verdict'] == NOT_MEASURED


def test_experiment_table_intervals_contain_their_values():
    r = _results(1, n=60).assign(category=lambda d: np.where(d.qid.astype(int) % 2, 'Home', 'Tools'))
    rows = [RowSpec('mrrec', {'row': 'MR.Rec'}), RowSpec('llm_none', {'row': 'none'}), RowSpec('gone', {'row': 'x'})]
    t = experiment_table(r, rows, per_category=True, n_boot=500, seed=3)
    ran = t[t['queries'] > 0]
    assert len(ran) == 6
    for m in ('R@100', 'R@10', 'N@100', 'N@10'):
        assert ((ran[f'{m} lo'] <= ran[m]) & (ran[m] <= ran[f'{m} hi'])).all(), m
        assert (ran[f'{m} hi'] - ran[f'{m} lo'] > 0).any(), m
    assert t.query("setting == 'gone'")[['R@100', 'R@100 lo', 'R@100 hi']].isna().all(axis=None)
    again = experiment_table(r, rows, per_category=True, n_boot=500, seed=3)
    pd.testing.assert_frame_equal(t, again)                                   # the run's seed fixes every interval


def test_t1_paired_differences_mark_the_best_baseline():
    r = _results(2)
    specs = experiment_specs('T1', set(r.setting))
    t = t1_paired_differences(r, specs, n_boot=500).set_index('setting')
    assert t.loc['llm_none', 'best baseline'] and t['best baseline'].sum() == 1
    assert t.loc['llm_none', 'R@100 lo'] > 0 and t.loc['llm_none', 'verdict'] == 'holds'
    assert t.loc['query_dense', 'queries'] == 0 and 'query_dense' in t.loc['query_dense', 'evidence']


def test_report_puts_results_first_and_keeps_the_other_tables(tmp_path):
    run = start_run('ci', tmp_path / 'run')
    write_table(pd.DataFrame({'a': [1]}), run.tables / 't1_overall')
    write_table(pd.DataFrame({'b': [2]}), run.tables / 't4_token_efficiency')
    (run.root / 'results.md').write_text('# Results: x\n\n## Findings\n\n- a claim\n\n[CSV](tables/t1_overall.csv)\n')
    text = write_report(run).read_text()
    assert text.index('## Results: x') < text.index('### Findings') < text.index('## Stages')
    assert '## Table: t4_token_efficiency' in text and '## Table: t1_overall' not in text
    (run.root / 'results.md').unlink()
    assert '## Table: t1_overall' in write_report(run).read_text()           # without results.md: every table
