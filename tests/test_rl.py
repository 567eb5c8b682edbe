"""GRPO stage (mrrec.rl): the loss mask on real rollouts of trl's tool loop (the text protocol's is checked in
nbs/06_rl.ipynb), rewards on hand-made answers, and a short CPU training run with SmolLM2 that is interrupted,
resumes, changes the weights and writes the F4 log.

Rollouts use a tiny hand-made task (a few items, two users with memory, a hashing embedder) so the tests do not
depend on the earlier stages' artifacts; the model, the trainer, the tool loop and the loss are the real ones.
"""
import dataclasses, itertools, math, os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')

import numpy as np
import pandas as pd
import pytest
import torch

from mrrec.core import start_run
from mrrec import rl
from mrrec.agent import MEMORY_TOOL_NAME
from mrrec.eval import plot_reward_trajectories
from mrrec.fakes import HashEmbedder, scripted_openings
from mrrec.rl import (EmbeddingRanker, RecTask, RLConfig, build_trainer, load_policy,
                      make_reward_funcs, masked_logp_gradients, rollout_tool_results,
                      tool_turn_renderer, train_rl, trained_policy, verify_tool_mask, read_reward_log)

hash_encode = HashEmbedder(dim=256).encode

POOL = pd.DataFrame({'item_id': [f'i{n}' for n in range(6)],
                     'metadata': ['wool beanie warm winter cap', 'cotton baseball cap summer', 'leather belt brown',
                                  'wool scarf grey', 'budget cotton beanie', 'premium wool cap navy']})
MEMORY = {'u1': [('u1/pattern/hats/0', 'prefers wool and warm materials'), ('u1/profile/-/0', 'budget shopper')],
          'u2': [('u2/pattern/hats/0', 'likes cotton caps for summer'), ('u2/profile/-/0', 'values lightweight items')]}

def memory_tool(user_id, aspects):
    return '\n'.join(f'[{eid}] {text}' for eid, text in MEMORY[user_id])

def prompt(row, protocol):
    return [{'role': 'system', 'content': 'You recommend products. Look up the user\'s memory, then answer with '
                                          '\\boxed{"ideal_item_profile": "...", "useful_memory_ids": ["..."]}.'},
            {'role': 'user', 'content': row['query']}]

TASK = RecTask(prompt=prompt, memory_tool=memory_tool,
               rank_targets=EmbeddingRanker(hash_encode, POOL.item_id, hash_encode(POOL.metadata.tolist())))
ROWS = pd.DataFrame({'qid': ['q1', 'q2'], 'query': ['a cap for the cold', 'a cap for summer'], 'item_id': ['i0', 'i1'],
                     'user_id': ['u1', 'u2'], 'category': ['Hats', 'Hats']})
SMALL = dict(num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=112,
             max_steps=1, learning_rate=1e-5)


def rollout_and_check(trainer, tok, aspects='warm material, price'):
    "One real rollout batch of trl's tool loop, first turns opening with a memory call; checks the mask and the gradient."
    opening = '<tool_call>\n{"name": "%s", "arguments": {"aspects": "%s"}}\n</tool_call>' % (MEMORY_TOOL_NAME, aspects)
    first_turn = lambda text: (opening + tok.eos_token) if 'user\n<tool_response>' not in text else None
    rows = [dict(trainer.train_dataset[i]) for i in (0, 0, 1, 1)]
    trainer.model.train()
    with scripted_openings(trainer.model, tok, first_turn):
        batch = trainer._generate_and_score_completions(rows)
    results = rollout_tool_results(trainer, rows, len(rows))
    render = tool_turn_renderer(trainer)
    for r, row in enumerate(rows):
        assert results[r] == [memory_tool(row['user_id'], aspects)]        # the row's own user's memory, once
        n = int(batch['completion_mask'][r].sum())
        ids, mask = batch['completion_ids'][r][:n].tolist(), batch['tool_mask'][r][:n].tolist()
        summary = verify_tool_mask(tok, ids, mask, results[r], render)       # 0 exactly on the inserted tool turn
        assert summary['masked'] == len(render(results[r][0])) and summary['spans'][0][0] > 0
        assert all(mask[summary['spans'][0][1]:summary['spans'][0][1] + 1])  # the model's answer turn follows, unmasked
    grads = masked_logp_gradients(trainer, batch, advantages=[1.0, -1.0, 0.5, -0.5])
    loss_mask = (batch['completion_mask'] * batch['tool_mask']).bool()
    tool_tokens = (batch['tool_mask'] == 0) & batch['completion_mask'].bool()
    assert int(tool_tokens.sum()) > 0
    assert bool((grads[tool_tokens] == 0).all())          # retrieved memory: no loss
    assert bool((grads[loss_mask] != 0).all())            # every policy token: in the loss
    return batch


# The text protocol (SmolLM2's own template, mrrec's rollout_func) gets the same check in nbs/06_rl.ipynb, which
# nbdev_test runs; trl's own tool loop is checked here only.
def test_trl_tool_loop_masks_memory_tokens(tmp_path):
    # a tool-capable template on the same small weights: Qwen2.5's template (ChatML, like SmolLM2's) makes trl run
    # its own tool loop with MemoryEnv as environment_factory -- the path the paper profile uses with Qwen2.5-3B
    from trl.chat_template_utils import qwen2_5_chat_template
    policy, tok = load_policy('smollm2')
    tok.chat_template = qwen2_5_chat_template
    trainer = build_trainer(TASK, RLConfig(**SMALL, protocol='auto'), policy, tok, ROWS, tmp_path / 'out', seed=0,
                            save_strategy='no')
    assert trainer.mrrec_protocol == 'chat_tools'
    rollout_and_check(trainer, tok)


def test_rewards_on_hand_made_answers():
    # the ranker of the test task puts each named profile at a fixed rank
    ranks = {'rank1': 1, 'rank50': 50, 'rank500': 500, 'absent': 5000}
    fmt, ndcg, mem = make_reward_funcs(lambda profiles, targets: np.array([ranks.get(p, 0) if p else 0 for p in profiles]))
    box = lambda p: '\\boxed{"ideal_item_profile": "%s", "useful_memory_ids": ["m1"]}' % p
    answers = ['I recommend a nice cap.', '\\boxed{"ideal_item_profile": "rank1"}', box('rank1'), box('rank50'),
               box('rank500'), box('absent')]
    calls = [1, 1, 0, 1, 1, 2]
    logged = {}
    kw = dict(answer_text=answers, memory_calls=calls, item_id=['t'] * 6, log_metric=lambda k, v: logged.setdefault(k, v))
    f, n, m = (fn(None, [None] * 6, **kw) for fn in (fmt, ndcg, mem))
    assert f == [0, 0, 1, 1, 1, 1]                             # bad format: no box / a missing key
    assert m == [1, 1, 0, 1, 1, 1]                             # no tool call -> 0, however good the answer
    expected = [0, 0, 1 + 1, 2 / math.log2(51), 1 / math.log2(501), 0]   # nDCG@100 + nDCG@1000
    assert np.allclose(n, expected, atol=1e-12)
    total = [0.1 * a + 5 * b + 0.1 * c for a, b, c in zip(f, n, m)]
    assert np.allclose(total, [0.1, 0.1, 10.1, 0.1 + 10 / math.log2(51) + 0.1, 0.1 + 5 / math.log2(501) + 0.1, 0.2])
    assert math.isclose(logged['recall@100'], 2 / 6) and math.isclose(logged['ndcg@1000'], (1 + 1 / math.log2(51) + 1 / math.log2(501)) / 6)


class _Interrupt(Exception): pass

def test_two_step_run_resumes_changes_weights_and_logs(tmp_path):
    from transformers import AutoModelForCausalLM, TrainerCallback
    run = start_run('ci', tmp_path / 'run', 0)
    cfg = RLConfig(**{**SMALL, 'max_steps': 2, 'save_steps': 1, 'save_total_limit': 2, 'max_completion_length': 64})
    initial = {k: v.clone() for k, v in load_policy('smollm2')[0].state_dict().items()}
    # reward variance within each group: every other rollout opens with a well-formed answer (format 1, target
    # ranked high), the others are sampled freely (almost surely format 0); the update then has a signal to follow
    flip = itertools.count()
    answer = '\\boxed{"ideal_item_profile": "warm wool beanie winter cap", "useful_memory_ids": []}'
    real_load, scripts = rl.load_policy, []
    def load_with_openings(name, dtype='float32'):
        model, tok = real_load(name, dtype)
        # keep the context manager referenced: collecting it would run its exit and restore plain generation
        scripts.append(scripted_openings(model, tok, lambda text: answer + tok.eos_token if next(flip) % 2 == 0 else None))
        scripts[-1].__enter__()
        return model, tok

    class CrashAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 1: raise _Interrupt()

    rl.load_policy = load_with_openings
    try:
        with pytest.raises(_Interrupt):
            train_rl(run, cfg, TASK, ROWS, callbacks=[CrashAfterFirstCheckpoint()])
        assert trained_policy(run) is None and (run.checkpoints / 'rl-instruct' / 'checkpoint-1').is_dir()
        meta = train_rl(run, cfg, TASK, ROWS)                # started again: resumes from checkpoint-1
    finally:
        rl.load_policy = real_load
    assert meta['resumed_from'].endswith('checkpoint-1') and meta['steps'] == 2
    folder = trained_policy(run)
    assert folder is not None
    trained = AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert len(changed) > len(initial) // 2, f"only {len(changed)} of {len(initial)} tensors changed"
    log = read_reward_log(run)
    assert list(log.step) == [1, 2] and set(log.split) == {'train'}    # one row per step, none duplicated by the resume
    for col in ('format_reward', 'memory_reward', 'ndcg_reward', 'rec_reward', 'total_reward', 'recall'):
        assert log[col].notna().all(), col
    assert (log.format_reward > 0).all() and np.allclose(log.rec_reward, 5 * log.ndcg_reward)
    png = plot_reward_trajectories(log, run.figures / 'f4.png')
    assert png.stat().st_size > 10_000
    assert train_rl(run, cfg, TASK, ROWS)['steps'] == 2      # a finished variant is not trained again
    # another [rl] setting is another training: the saved policy and its checkpoints are not reused
    again = train_rl(run, dataclasses.replace(cfg, max_steps=1), TASK, ROWS)
    assert again['steps'] == 1 and again['resumed_from'] is None and again['fingerprint'] != meta['fingerprint']
    assert list(read_reward_log(run).step) == [1]


def test_early_stopping_keeps_step_0_when_no_step_validates_better(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    run = start_run('ci', tmp_path / 'run', 0)
    cfg = RLConfig(**{**SMALL, 'max_completion_length': 48, 'per_device_eval_batch_size': 4, 'eval_steps': 1})
    real_evaluate = rl.MemoryGRPOTrainer.evaluate
    def evaluate(self, *a, **kw):   # the starting policy validates far better than anything training can reach
        metrics = real_evaluate(self, *a, **kw)
        if self.state.global_step == 0: metrics['eval_reward'] = 1e9
        return metrics
    monkeypatch.setattr(rl.MemoryGRPOTrainer, 'evaluate', evaluate)
    meta = train_rl(run, cfg, TASK, ROWS, val_rows=ROWS)
    assert meta['steps'] == 1 and meta['kept_step'] == 0 and meta['best_metric'] == 1e9
    start = load_policy('smollm2')[0].state_dict()
    saved = AutoModelForCausalLM.from_pretrained(str(trained_policy(run))).state_dict()
    assert all(torch.equal(start[k], saved[k]) for k in start)    # the saved policy is the starting one
    assert set(read_reward_log(run).split) == {'train', 'val'}


def test_validation_draws_alike_and_leaves_training_randomness_alone(tmp_path):
    # common random numbers: one policy validates to the same numbers every time (sampled at temperature 1), and a
    # validation leaves the random state that training's rollouts sample from where it was
    policy, tok = load_policy('smollm2')
    cfg = RLConfig(**{**SMALL, 'max_completion_length': 32, 'per_device_eval_batch_size': 4, 'eval_steps': 1})
    trainer = build_trainer(TASK, cfg, policy, tok, ROWS, tmp_path / 'out', seed=0, val_rows=ROWS)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    drawn = lambda metrics: {k: v for k, v in metrics.items() if 'runtime' not in k and 'per_second' not in k}
    first = drawn(trainer.evaluate())
    assert torch.equal(torch.get_rng_state(), before)
    assert drawn(trainer.evaluate()) == first and 'eval_reward' in first
