"""The paper profile's GRPO set-up (mrrec.rl_setup, issue 13 item 2): one real GRPO step with bf16 autocast over
float32 master weights at lr 1e-6 changes the weights (and the same step on bf16 weights does not), the trainer
consumes the profile's prompts per optimizer step, and the stage launches or refuses when the profile names more
processes than it runs in.

The policy is a tiny randomly initialised Llama with SmolLM2's tokenizer (the optimizer step, not the model, is under
test); its rollouts are scored by a reward that differs between completions, so the advantages are not zero.
"""
import os, types, zlib

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')

import numpy as np
import pandas as pd
import pytest
import torch

from mrrec import rl, rl_setup
from mrrec.core import ConfigError, load_profile, start_run, write_json
from mrrec.rl import POLICY_META, RecTask, RLConfig, build_trainer, policy_dir

LR = 1e-6
ROWS = pd.DataFrame({'qid': [f'q{i}' for i in range(8)], 'query': [f'a cap for day {i}' for i in range(8)],
                     'item_id': [f'i{i}' for i in range(8)], 'user_id': ['u1'] * 8, 'category': ['Hats'] * 8})


@pytest.fixture(scope='module')
def tokenizer():
    from transformers import AutoTokenizer
    from mrrec.backends import local_model_folder
    tok = AutoTokenizer.from_pretrained(local_model_folder('smollm2'))
    tok.padding_side = 'left'
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    return tok


def tiny_policy(tok, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).to(dtype)


class CountingRanker:
    "Ranks by a hash of the profile (different completions, different rewards) and counts what it was asked."
    def __init__(self): self.calls = []
    def __call__(self, profiles, targets):
        self.calls.append(list(targets))
        return np.array([1 + zlib.crc32((p or '').encode()) % 2000 for p in profiles])


def one_step(tok, model, tmp_path, bf16: bool):
    "One GRPO optimizer step at lr 1e-6; (weights before, after, the ranker, the trainer, q_proj output dtypes)."
    ranker = CountingRanker()
    task = RecTask(prompt=lambda row, protocol: [{'role': 'user', 'content': row['query']}],
                   memory_tool=lambda user, aspects: '[u1/profile/-/0] budget shopper', rank_targets=ranker,
                   parse_answer=lambda text: {'ideal_item_profile': text or 'empty', 'useful_memory_ids': []})
    cfg = RLConfig(num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                   max_completion_length=12, max_steps=1, learning_rate=LR, bf16=bf16, protocol='text')
    trainer = build_trainer(task, cfg, model, tok, ROWS, tmp_path / 'out', seed=0, save_strategy='no')
    q_proj = trainer.model.model.layers[0].self_attn.q_proj
    seen = []
    hook = q_proj.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    before = q_proj.weight.detach().clone()
    try: trainer.train()
    finally: hook.remove()
    return before, q_proj.weight.detach().clone(), ranker, trainer, cfg, seen


def test_bf16_autocast_step_at_lr_1e6_changes_fp32_master_weights(tokenizer, tmp_path):
    before, after, ranker, trainer, cfg, dtypes = one_step(tokenizer, tiny_policy(tokenizer), tmp_path, bf16=True)
    assert trainer.args.bf16 and trainer.accelerator.mixed_precision == 'bf16'
    assert torch.bfloat16 in dtypes                          # the forward ran in bf16 (autocast) ...
    assert after.dtype == torch.float32                      # ... over float32 weights, which the optimizer stepped
    changed = float((after != before).float().mean())
    assert changed > 0.9, f"only {changed:.1%} of the weights moved"
    assert float((after - before).abs().max()) < 10 * LR    # an Adam step of about the learning rate
    # prompts per optimizer step: what the reward saw in the step is the profile's batch
    completions = sum(len(c) for c in ranker.calls)
    assert completions // cfg.num_generations == cfg.prompts_per_step == rl_setup.trainer_prompts_per_step(trainer) == 4
    assert len({t for c in ranker.calls for t in c}) == cfg.prompts_per_step


def test_the_same_step_on_bf16_weights_rounds_away(tokenizer, tmp_path):
    "What the paper profile used to do (bf16 weights, plain AdamW at 1e-6): almost no weight moves."
    before, after, *_ = one_step(tokenizer, tiny_policy(tokenizer, torch.bfloat16), tmp_path, bf16=False)
    assert after.dtype == torch.bfloat16
    assert float((after != before).float().mean()) < 0.1


def test_bf16_weights_are_refused_by_the_profile():
    with pytest.raises(ConfigError, match="keep dtype = 'float32'"):
        RLConfig(dtype='bfloat16', bf16=True)
    paper = load_profile('paper').section(RLConfig)
    assert (paper.dtype, paper.bf16, paper.prompts_per_step) == ('float32', True, 256)


def test_trainer_counts_prompts_in_the_processes_it_runs(tokenizer, tmp_path):
    "A profile naming 2 processes, trained in 1, would train half the batch: train_rl compares the two and refuses."
    cfg = RLConfig(num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_processes=2,
                   max_steps=1, max_completion_length=8)
    task = RecTask(prompt=lambda row, protocol: [{'role': 'user', 'content': row['query']}],
                   memory_tool=lambda u, a: '', rank_targets=CountingRanker())
    trainer = build_trainer(task, cfg, tiny_policy(tokenizer), tokenizer, ROWS, tmp_path / 'out', save_strategy='no')
    assert (cfg.prompts_per_step, rl_setup.trainer_prompts_per_step(trainer)) == (8, 4)


def test_paper_stage_refuses_without_the_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(rl, 'gpu_count', lambda: 1)
    run = start_run('paper', tmp_path / 'paper-run')
    with pytest.raises(ConfigError, match=r'num_processes = 8 \(256 prompts per step = 20 x 8 x 8 / 5\) needs 8 GPUs'):
        rl.rl_stage(run)
    monkeypatch.setenv('WORLD_SIZE', '4')      # a launch of the wrong size
    with pytest.raises(ConfigError, match='one of 4 launched processes'):
        rl.rl_stage(run)


def test_paper_stage_launches_accelerate_on_8_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(rl, 'gpu_count', lambda: 8)
    run = start_run('paper', tmp_path / 'paper-run')
    launched = []
    def fake_launch(run_, cfg, profile, variants, restart):
        launched.append((profile, variants, restart, cfg.num_processes))
        for v in variants:   # what the launched processes leave behind
            policy_dir(run_, v).mkdir(parents=True, exist_ok=True)
            write_json({'variant': v, 'steps': 3}, policy_dir(run_, v) / POLICY_META)
            (policy_dir(run_, v) / 'config.json').write_text('{}')
    monkeypatch.setattr(rl, 'launch_training', fake_launch)
    out = rl.rl_stage(run)
    assert launched == [(str(run.profile.path), ['instruct', 'base'], False, 8)]
    assert {v: m['steps'] for v, m in out.items()} == {'instruct': 3, 'base': 3}
    rl.rl_stage(run)                            # both policies exist: nothing is launched again
    assert len(launched) == 1


def test_launch_training_runs_accelerate_with_the_written_config(tmp_path):
    run = start_run('paper', tmp_path / 'paper-run')
    cfg = load_profile('paper').section(RLConfig)
    seen = []
    def runner(cmd, **kw):
        seen.append(cmd); kw['stdout'].write('ok\n'); return types.SimpleNamespace(returncode=0)
    rl_setup.launch_training(run, cfg, 'paper', ['base'], restart=True, runner=runner)
    cmd = seen[0]
    assert cmd[1:5] == ['-m', 'accelerate.commands.launch', '--config_file',
                        str(run.checkpoints / 'rl-launch' / 'accelerate.yaml')]
    assert cmd[5].endswith('mrrec') and cmd[6] == 'rl' and cmd[-3:] == ['--variant', 'base', '--restart']
    import yaml
    ac = yaml.safe_load((run.checkpoints / 'rl-launch' / 'accelerate.yaml').read_text())
    assert (ac['num_processes'], ac['mixed_precision'], ac['deepspeed_config']['zero_stage']) == (8, 'bf16', 3)
