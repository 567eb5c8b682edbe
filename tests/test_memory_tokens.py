"""T4 counts memory the way T3 reads it (issue 13 item 4): the entries' text, without the entry-id tags, counted with
the tokenizer the retrieval stage used; the findings' memory-token claim uses the same count."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pandas as pd
import pytest

from mrrec.contribution import (contribution_inputs, memory_read_text, memory_read_tokens, memory_token_counter)
from mrrec.core import start_run
from mrrec.efficiency import token_efficiency_specs, token_efficiency_table

TAGGED = '[u7/pattern/hats/0] prefers merino wool in dark colours\n[u7/profile/-/1] a budget shopper'


def records(memory_text, memory_tokens):
    n = len(memory_text)
    return pd.DataFrame({'setting': ['mrrec'] * n, 'qid': [str(i) for i in range(n)], 'category': ['Hats'] * n,
                         'rank': [1] * n, 'query': ['a cap'] * n, 'item_id': ['i1'] * n, 'profile': ['a wool cap'] * n,
                         'messages': [[]] * n, 'memory_text': memory_text, 'memory_tokens': memory_tokens,
                         'memory_tokens_method': ['llm_tokenizer'] * n})


def test_t3_and_t4_read_the_same_memory_text():
    traj = records([TAGGED, ''], [40, 0])
    t3 = contribution_inputs(traj, pd.DataFrame({'item_id': ['i1'], 'metadata': ['wool cap']}))['local'].tolist()
    assert t3 == [memory_read_text(v) for v in traj['memory_text']]
    assert t3[0] == 'prefers merino wool in dark colours\na budget shopper' and '[' not in t3[0]


def test_t4_counts_entry_text_with_the_llm_tokenizer(tmp_path):
    run = start_run('ci', tmp_path / 'run')
    count, method = memory_token_counter(run, ['llm_tokenizer'])
    assert method == 'llm_tokenizer'
    with_ids, text_only = count([TAGGED])[0], count([memory_read_text(TAGGED)])[0]
    assert 0 < text_only < with_ids              # the tags are tokens too, and T4 no longer counts them
    traj = records([TAGGED, TAGGED], [with_ids, with_ids])
    assert memory_read_tokens(traj, count).tolist() == [text_only, text_only]
    t4 = token_efficiency_table(traj, token_efficiency_specs(), None, 'toy', count, method).set_index('memory setting')
    row = t4.loc['MR.Rec']
    assert (row['avg_memory_tokens'], row['avg_memory_tokens_with_ids']) == (text_only, with_ids)
    assert row['efficiency'] == pytest.approx(100 / text_only)
    assert 'entry-id tags dropped' in row['memory tokens']
    # without a counter the recorded counts are kept, and the table says so
    old = token_efficiency_table(traj, token_efficiency_specs()).set_index('memory setting').loc['MR.Rec']
    assert old['avg_memory_tokens'] == with_ids and 'entry ids included' in old['memory tokens']


def test_records_without_a_tokenizer_are_counted_by_characters(tmp_path):
    count, method = memory_token_counter(start_run('ci', tmp_path / 'run'), ['approx_4_chars'])
    assert method == 'approx_4_chars' and count(['abcdefgh']) == [2]
