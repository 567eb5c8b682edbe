"""F5's extra dense encoders (issue 13 item 6): `[eval] f5_encoders` (the paper profile: BAAI/bge-m3) re-search MR.Rec's
dense row's texts over the whole pool with another encoder, one more F5 line each."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pandas as pd

from mrrec.core import load_profile
from mrrec.embed import load_embedder
from mrrec.eval import EvalConfig, curve_table, encoder_ranks
from mrrec.experiments import RowSpec
from mrrec.llm import EmbedConfig

POOL = pd.DataFrame({'item_id': [f'i{n}' for n in range(5)],
                     'metadata': ['red merino wool beanie for winter', 'blue cotton baseball cap',
                                  'steel claw hammer with rubber grip', 'stainless steel kettle 1.7 litres',
                                  'orthopedic memory foam dog bed']})


def test_a_second_encoder_ranks_the_same_profiles():
    minilm = load_embedder(EmbedConfig(model='minilm'))
    traj = pd.DataFrame({'setting': ['mrrec'] * 3, 'qid': ['1', '2', '3'], 'category': ['C'] * 3,
                         'query': ['a hat', 'a tool', 'a bed'], 'target_item_id': ['i0', 'i2', 'i4'],
                         'search_text': ['a warm wool beanie', 'a hammer with a grip', None]})
    ranks = encoder_ranks(traj, 'mrrec', POOL, minilm, 'mrrec@all-minilm')
    assert ranks['rank'].tolist() == [1, 1, 1] and set(ranks['setting']) == {'mrrec@all-minilm'}
    f5 = curve_table(ranks, [RowSpec('mrrec@all-minilm', {'system': 'MR.Rec, dense (all-minilm)'})], ks=(1, 10))
    assert f5['R@k'].tolist() == [1.0, 1.0]


def test_the_paper_profile_names_bge_m3_and_the_cpu_profiles_none():
    assert load_profile('paper').section(EvalConfig).f5_encoders == ('BAAI/bge-m3',)
    assert load_profile('ci').section(EvalConfig).f5_encoders == () == load_profile('demo').section(EvalConfig).f5_encoders
