"Issue 13 item 1: the ablations compare like with like (one policy per experiment, F3's 'w/o RL' excepted)."
import dataclasses

import pandas as pd
import pytest

from mrrec.agent import AgentConfig
from mrrec.ablations import ablation_settings
from mrrec.eval import curve_table, experiment_table
from mrrec.experiments import (ABLATIONS, MixedPolicyError, check_one_policy, experiment_settings, experiment_specs,
                               settings_registry, setting_policy)

TRAINED = AgentConfig()                          # ablation_policy = 'trained', the default
BASE = AgentConfig(ablation_policy='base')


def _traj(settings):
    return pd.DataFrame([{'setting': s, 'qid': str(q), 'category': 'C', 'rank': q + 1} for s in settings
                         for q in range(4)])


def test_by_default_the_ablations_exist_only_as_the_trained_policys_copies():
    untrained = settings_registry(TRAINED)
    assert not [n for n, s in untrained.items() if s.queries == 'ablation' and n != 'mrrec']
    trained = settings_registry(TRAINED, trained=True, warm=True)
    abl = [s for s in trained.values() if s.queries == 'ablation' and s.name != 'mrrec']
    assert abl and {s.policy for s in abl} == {'trained'}
    assert sorted(ablation_settings(TRAINED)) == sorted(s.name for s in abl)
    assert ablation_settings(BASE) == []


@pytest.mark.parametrize('experiment', ABLATIONS)
def test_every_ablation_row_with_an_llm_is_the_trained_copy(experiment):
    everything = list(settings_registry(TRAINED, trained=True, warm=True)) + list(settings_registry(BASE))
    rows = experiment_settings(everything, TRAINED).query('experiment == @experiment')
    for r in rows.itertuples():
        policy = setting_policy(r.setting, TRAINED)
        expected = {'', 'warm'} if r.row == 'w/o RL' else {'', 'trained'}
        assert policy in expected, (r.row, r.setting, policy)
    specs = experiment_specs(experiment, everything, TRAINED)
    assert check_one_policy(specs, everything, experiment) == 'trained'


def test_the_backbone_profile_never_mixes_either():
    everything = list(settings_registry(TRAINED, trained=True, warm=True)) + list(settings_registry(BASE))
    for e in ('T2', 'F5', 'F6'):
        assert check_one_policy(experiment_specs(e, everything, BASE), everything, e) == 'base'


def test_a_table_of_mixed_policies_is_refused():
    specs = experiment_specs('T2', ['mrrec_rl', 'mrrec_wo_local_rl'], TRAINED)
    mixed = [dataclasses.replace(r, setting='mrrec_wo_local', policy='base') if r.setting == 'mrrec_wo_local_rl' else r
             for r in specs]
    traj = _traj(['mrrec_rl', 'mrrec_wo_local'])
    with pytest.raises(MixedPolicyError, match='untrained backbone'):
        experiment_table(traj, mixed)
    with pytest.raises(MixedPolicyError):
        curve_table(traj, mixed, ks=(10,))
    ok = experiment_table(_traj(['mrrec_rl', 'mrrec_wo_local_rl']), specs)
    assert set(ok.loc[ok['queries'] > 0, 'policy']) == {'RL-trained'}


def test_t1_compares_policies_on_purpose():
    have = ['query_dense', 'llm_none', 'mrrec_teacher', 'mrrec_bc', 'mrrec_rl']
    table = experiment_table(_traj(have), experiment_specs('T1', have, TRAINED))
    ran = table[table['queries'] > 0].set_index('setting')['policy']
    assert ran.to_dict() == {'query_dense': 'no LLM', 'llm_none': 'untrained backbone',
                             'mrrec_teacher': 'scripted teacher', 'mrrec_bc': 'warm start (BC)',
                             'mrrec_rl': 'RL-trained'}
