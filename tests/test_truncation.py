"""Truncation is counted (issue 17 item 6): the encoder counts, per call, the texts longer than its max_seq_length
(ledger `truncated`, one warning), and the report's model-call timings sum them per part and kind."""
import logging, os
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from mrrec.llm import EmbedConfig
from mrrec.embed import count_truncated, load_embedder
from mrrec.efficiency import model_call_timings


def test_minilm_counts_a_long_text(caplog):
    e = load_embedder(EmbedConfig(model='minilm'))
    assert e.max_seq_length == 256
    long, short = ' '.join(['wool'] * 400), 'a warm wool beanie'
    assert count_truncated(e.model.tokenizer, [long, short], e.max_seq_length) == 1
    with caplog.at_level(logging.WARNING, logger='mrrec.embed'):
        v = e.encode([short, long], stage='items.pool')
        e.encode([short], kind='query', stage='queries')
    assert [r['truncated'] for r in e.ledger.records()] == [1, 0]
    assert [r.getMessage() for r in caplog.records if r.name == 'mrrec.embed'] == \
        ['items.pool: 1 of 2 texts longer than 256 tokens were cut to 256 (their tail is not embedded)']
    np.testing.assert_allclose(v, e._encode([short, long], None, False), atol=1e-5)   # counting changes no vector


def test_model_call_timings_sums_truncated():
    rows = [{'stage': 'items.pool', 'kind': 'embed_document', 'requests': 5, 'cached': 0, 'truncated': 2},
            {'stage': 'items.more', 'kind': 'embed_document', 'requests': 3, 'cached': 3, 'truncated': 1},
            {'stage': 'items.q', 'kind': 'embed_query', 'requests': 4},                  # a row written before the count
            {'stage': 'agent.turn', 'kind': 'generate', 'requests': 2, 'truncated': 1}]
    t = model_call_timings(rows)
    assert t[['part', 'kind', 'requests', 'truncated']].values.tolist() == [
        ['items', 'embed_document', 8, 2 + 1], ['items', 'embed_query', 4, 0], ['agent', 'generate', 2, 1]]
    assert t['truncated'].dtype == 'int64' and 'truncated' in model_call_timings([]).columns
