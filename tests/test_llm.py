"""mrrec.llm, mrrec.backends and mrrec.embed outside the notebooks: the OpenAI-compatible backend against a local
server (retries, errors, concurrency, secrets), crash safety of the caches under SIGKILL and concurrent writers, and
the transformers backend (one shared SmolLM2 load)."""
import http.server, json, logging, os, signal, sqlite3, subprocess, sys, textwrap, threading, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from mrrec.core import ConfigError
from mrrec.llm import (EmbedConfig, Generation, LLMConfig, Ledger, ResponseCache, SamplingParams, check_conversations,
                       request_key)
from mrrec.backends import LLMRequestError, bench_llm_main, load_llm
from mrrec.embed import EmbeddingStore, load_embedder, text_hash
from mrrec.data import simplify_queries
from mrrec.fakes import ScriptedLLM

SECRET = 'sk-test-DO-NOT-LEAK-4f9a'
TOOL = {'type': 'function', 'function': {'name': 'search_memory', 'description': 'Search the user memory',
        'parameters': {'type': 'object', 'properties': {'aspects': {'type': 'array', 'items': {'type': 'string'}}}}}}


# ---------------------------------------------------------------- a small OpenAI-compatible server on 127.0.0.1
class FakeServer:
    """Chat completions with scripted failures first: `fail` is a list of (status, headers) answered in order before
    normal service. Normal answers depend on the last message: EMPTY -> '', LONG -> finish 'length', TOOL -> a tool
    call, else 'echo:<content>'. A failing answer echoes the Authorization header back in its body (a careless proxy),
    so the client's redaction is tested too."""
    def __init__(self, fail=(), delay=0.0, first_delay=0.0):
        self.fail, self.delay, self.first_delay = list(fail), delay, first_delay
        self.requests, self.in_flight, self.max_in_flight, self.lock = [], 0, 0, threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *a): pass
            def _send(self, status, body: bytes, headers=()):
                self.send_response(status)
                for k, v in headers: self.send_header(k, v)
                self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                with server.lock:
                    server.requests.append({'auth': self.headers.get('Authorization'), 'body': body, 'path': self.path})
                    n = len(server.requests)
                    failure = server.fail.pop(0) if server.fail else None
                    server.in_flight += 1; server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.first_delay if n == 1 else server.delay)
                    if failure is not None:
                        status, headers = failure
                        return self._send(status, json.dumps({'error': {'message': f"bad things; you sent {self.headers.get('Authorization')}"}}).encode(), headers)
                    last = body['messages'][-1]['content'] or ''
                    msg, reason = {'role': 'assistant', 'content': f'echo:{last}'}, 'stop'
                    if 'EMPTY' in last: msg['content'] = ''
                    elif 'LONG' in last: msg['content'], reason = 'partial answer', 'length'
                    elif 'TOOL' in last:
                        msg = {'role': 'assistant', 'content': None, 'tool_calls': [{'id': 't1', 'type': 'function', 'function':
                               {'name': 'search_memory', 'arguments': '{"aspects": ["fit", "warmth"]}'}}]}
                        reason = 'tool_calls'
                    prompt = sum(len(m.get('content') or '') for m in body['messages']) // 4 + 1
                    out = {'id': 'x', 'object': 'chat.completion', 'choices': [{'index': 0, 'message': msg, 'finish_reason': reason}],
                           'usage': {'prompt_tokens': prompt, 'completion_tokens': len(msg.get('content') or '') // 4 + 1}}
                    self._send(200, json.dumps(out).encode())
                finally:
                    with server.lock: server.in_flight -= 1

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_port}/v1'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self): self.httpd.shutdown(); self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv('MRREC_TEST_KEY', SECRET)
    return 'MRREC_TEST_KEY'


def api_llm(url, cache=None, ledger=None, **kw):
    cfg = dict(backend='openai', model='fake-model', base_url=url, retry_base_s=0.01, max_retries=4, timeout_s=5.0)
    cfg.update(kw)
    return load_llm(LLMConfig(**cfg), cache=cache, ledger=ledger)


def convs(*texts): return [[{'role': 'user', 'content': t}] for t in texts]


# ---------------------------------------------------------------- OpenAI-compatible backend
def test_api_answers_flags_tools_and_cost(server, secret_env, tmp_path):
    llm = api_llm(server.url, api_key_env=secret_env, price_in_per_1m=2.0, price_out_per_1m=8.0)
    g = llm.generate(convs('hello', 'EMPTY please', 'LONG please', 'TOOL please'), tools=[TOOL], stage='t')
    assert [x.text for x in g[:3]] == ['echo:hello', '', 'partial answer']
    assert g[1].empty and not g[1].truncated and g[2].truncated and not g[0].empty
    assert g[3].finish_reason == 'tool_calls' and g[3].tool_calls == [{'id': 't1', 'name': 'search_memory', 'arguments': {'aspects': ['fit', 'warmth']}}]
    assert g[3].as_message()['tool_calls'][0]['function']['name'] == 'search_memory'
    assert g[0].cost_usd == pytest.approx((g[0].input_tokens * 2.0 + g[0].output_tokens * 8.0) / 1e6)
    assert all(r['body']['tools'] == [TOOL] and r['path'] == '/v1/chat/completions' for r in server.requests)
    assert all(r['auth'] == f'Bearer {SECRET}' for r in server.requests)


def test_api_retries_429_and_5xx_honouring_retry_after(server):
    server.fail = [(429, [('Retry-After', '0.4')]), (500, []), (503, [])]
    ledger = Ledger()
    t0 = time.perf_counter()
    g = api_llm(server.url, ledger=ledger, retry_base_s=0.01).generate(convs('hi'), stage='retry')
    assert g[0].text == 'echo:hi'
    assert len(server.requests) == 4
    assert time.perf_counter() - t0 >= 0.4                # the server's Retry-After, not the 10 ms back-off
    assert ledger.summary().loc[0, 'retries'] == 3


def test_api_gives_up_after_max_retries(server):
    server.fail = [(502, [])] * 10
    with pytest.raises(LLMRequestError, match='gave up after 3 attempts.*HTTP 502'):
        api_llm(server.url, max_retries=2).generate(convs('hi'))
    assert len(server.requests) == 3


def test_api_4xx_fails_at_once_with_the_servers_message_and_no_key(server, secret_env, caplog):
    server.fail = [(401, [])]
    with pytest.raises(LLMRequestError) as e:
        api_llm(server.url, api_key_env=secret_env).generate(convs('hi'))
    assert 'HTTP 401' in str(e.value) and 'bad things' in str(e.value) and 'fake-model' in str(e.value)
    assert SECRET not in str(e.value) and '***' in str(e.value)
    assert len(server.requests) == 1                      # a client error is not retried


def test_api_timeout_is_retried():
    s = FakeServer(first_delay=1.5)
    try:
        g = api_llm(s.url, timeout_s=0.3).generate(convs('slow'))
        assert g[0].text == 'echo:slow' and len(s.requests) == 2
    finally: s.close()


def test_api_concurrency_is_bounded():
    s = FakeServer(delay=0.1)
    try:
        t0 = time.perf_counter()
        g = api_llm(s.url, max_concurrency=3).generate(convs(*[f'q{i}' for i in range(12)]))
        assert [x.text for x in g] == [f'echo:q{i}' for i in range(12)]    # order kept
        assert s.max_in_flight == 3
        assert time.perf_counter() - t0 < 12 * 0.1               # and they did overlap
    finally: s.close()


def test_api_missing_key_is_a_clear_error(monkeypatch, server):
    monkeypatch.delenv('MRREC_NO_SUCH_KEY', raising=False)
    with pytest.raises(ConfigError, match='MRREC_NO_SUCH_KEY'):
        api_llm(server.url, api_key_env='MRREC_NO_SUCH_KEY')


def test_api_sampling_sends_a_per_request_seed(server):
    llm = api_llm(server.url)
    llm.generate(convs('a', 'a', 'b'), temperature=0.8, top_p=0.9, seed=5)
    llm.generate(convs('a'), temperature=0.8, top_p=0.9, seed=5)
    seeds = [(r['body']['messages'][0]['content'], r['body']['seed']) for r in server.requests]   # arrival order varies
    first_a = {sd for c, sd in seeds[:3] if c == 'a'}
    assert len(first_a) == 2 and len({sd for _, sd in seeds[:3]}) == 3   # the two copies of 'a' get different seeds
    assert seeds[3][1] in first_a                                      # and the same request repeats its seed
    assert all(r['body']['temperature'] == 0.8 and r['body']['top_p'] == 0.9 for r in server.requests)
    llm.generate(convs('greedy'))
    assert 'seed' not in server.requests[-1]['body'] and server.requests[-1]['body']['temperature'] == 0.0


PARTIAL = [{'role': 'user', 'content': 'Describe a hat.'}, {'role': 'assistant', 'content': 'It is'}]


def test_api_vllm_dialect_sends_continuation_and_penalty(server):
    llm = api_llm(server.url, api_dialect='vllm', repetition_penalty=1.15)
    llm.generate([PARTIAL, PARTIAL[:1]])
    bodies = {len(r['body']['messages']): r['body'] for r in server.requests}
    assert bodies[2]['messages'][-1] == {'role': 'assistant', 'content': 'It is'}          # the partial message is sent as is
    assert (bodies[2]['continue_final_message'], bodies[2]['add_generation_prompt']) == (True, False)
    assert 'continue_final_message' not in bodies[1] and 'add_generation_prompt' not in bodies[1]
    assert bodies[1]['repetition_penalty'] == bodies[2]['repetition_penalty'] == 1.15
    llm.generate(convs('plain'), repetition_penalty=1.0)
    assert 'repetition_penalty' not in server.requests[-1]['body']                       # 1 = off: not sent


def test_api_standard_dialect_sends_no_extra_fields(server):
    llm = api_llm(server.url)
    g = llm.generate([PARTIAL])
    body = server.requests[-1]['body']
    assert body['messages'][-1]['role'] == 'assistant' and g[0].text == 'echo:It is'
    assert not {'continue_final_message', 'add_generation_prompt', 'repetition_penalty'} & set(body)
    with pytest.raises(ValueError, match='has no such field'):
        llm.generate([PARTIAL], repetition_penalty=1.2)
    with pytest.raises(ConfigError, match="needs api_dialect = 'vllm'"):
        api_llm(server.url, repetition_penalty=1.2)


def test_partial_messages_are_checked_and_keyed():
    with pytest.raises(ValueError, match='conversation 1: a final assistant message is a partial answer'):
        check_conversations([PARTIAL, PARTIAL[:1] + [{'role': 'assistant', 'content': '  '}]])
    with pytest.raises(ValueError, match='partial answer'):
        check_conversations([PARTIAL[:1] + [{'role': 'assistant', 'content': None, 'tool_calls': [{'id': 'c', 'function': {}}]}]])
    p = SamplingParams(32, 0.0, 1.0)
    keys = {request_key('transformers', 'm', c, None, p, None) for c in
            (PARTIAL[:1], PARTIAL, PARTIAL[:1] + [{'role': 'assistant', 'content': 'It was'}])}
    assert len(keys) == 3                                                   # with / without / another start
    penal = {request_key('transformers', 'm', PARTIAL[:1], None, SamplingParams(32, 0.0, 1.0, repetition_penalty=r), None)
             for r in (1.0, 1.1, 1.2, 1.0)}
    assert len(penal) == 3


def test_secret_never_in_cache_ledger_outputs_or_logs(server, secret_env, tmp_path, caplog):
    server.fail = [(500, [])]                              # its body echoes the Authorization header
    caplog.set_level(logging.DEBUG)
    cache, ledger_path = tmp_path / 'cache.sqlite', tmp_path / 'logs' / 'calls.jsonl'
    llm = api_llm(server.url, cache=cache, ledger=Ledger(ledger_path), api_key_env=secret_env)
    g = llm.generate(convs('hello', 'TOOL'), tools=[TOOL], stage='secret')
    again = llm.generate(convs('hello', 'TOOL'), tools=[TOOL], stage='secret')
    assert all(x.cached for x in again) and len(server.requests) == 3
    llm.cache.close()
    blobs = b''.join(p.read_bytes() for p in tmp_path.rglob('*') if p.is_file())
    assert SECRET.encode() not in blobs
    assert SECRET not in repr(g) + repr(again) + repr(llm) + caplog.text + llm.ledger.summary().to_string()
    assert 'bad things' in caplog.text                   # the retry was logged (with the key scrubbed)


# ---------------------------------------------------------------- crash safety and concurrency of the caches
CHILD = textwrap.dedent('''
    import sys
    from mrrec.llm import LLMConfig
    from mrrec.backends import load_llm
    url, cache, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llm = load_llm(LLMConfig(backend='openai', model='fake-model', base_url=url, max_concurrency=4, retry_base_s=0.01), cache=cache)
    llm.generate([[{'role': 'user', 'content': f'q{i}'}] for i in range(first, first + n)], stage='child')
''')


def _count(path):
    try:
        with sqlite3.connect(path, timeout=5) as c: return c.execute('SELECT COUNT(*) FROM responses').fetchone()[0]
    except sqlite3.OperationalError: return 0


def test_response_cache_survives_kill_9_mid_run(tmp_path):
    s = FakeServer(delay=0.03)
    cache = tmp_path / 'cache.sqlite'
    try:
        child = subprocess.Popen([sys.executable, '-c', CHILD, s.url, str(cache), '0', '400'])
        deadline = time.time() + 120
        while _count(cache) < 40 and time.time() < deadline and child.poll() is None: time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL); child.wait()
        assert child.returncode == -signal.SIGKILL, 'the writer finished before it could be killed'
        with sqlite3.connect(cache) as c:
            assert c.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
            rows = c.execute('SELECT value FROM responses').fetchall()
        done = len(rows)
        assert 40 <= done < 400
        assert all(Generation.from_dict(json.loads(v)).text.startswith('echo:q') for (v,) in rows)   # nothing torn
        sent = len(s.requests)
        llm = api_llm(s.url, cache=cache, max_concurrency=8)
        g = llm.generate(convs(*[f'q{i}' for i in range(400)]))
        assert [x.text for x in g] == [f'echo:q{i}' for i in range(400)]
        assert sum(x.cached for x in g) == done                    # every completed entry is read back ...
        assert len(s.requests) - sent == 400 - done                # ... and only the rest is asked again
    finally: s.close()


def test_response_cache_concurrent_writer_processes(tmp_path):
    s = FakeServer(delay=0.005)
    cache = tmp_path / 'cache.sqlite'
    try:
        kids = [subprocess.Popen([sys.executable, '-c', CHILD, s.url, str(cache), str(first), '150']) for first in (0, 75, 150)]
        assert [k.wait(timeout=180) for k in kids] == [0, 0, 0]
        c = ResponseCache(cache)
        assert len(c) == 300                                       # overlaps stored once, nothing lost
        assert all(v['text'] for v in c.get_many([k for (k,) in c._conn.execute('SELECT key FROM responses')]).values())
    finally: s.close()


STORE_CHILD = textwrap.dedent('''
    import sys, numpy as np
    from mrrec.embed import EmbeddingStore
    store = EmbeddingStore(sys.argv[1], 32)
    def vec(h): return np.random.default_rng(int(h[:12], 16)).standard_normal(32).astype(np.float32)
    import hashlib
    for b in range(100000):
        hs = [hashlib.sha256(f'{sys.argv[2]}-{b}-{j}'.encode()).hexdigest()[:32] for j in range(40)]
        store.add(hs, np.stack([vec(h) for h in hs]))
''')


def _vec(h): return np.random.default_rng(int(h[:12], 16)).standard_normal(32).astype(np.float32)


def test_embedding_store_survives_kill_9_and_concurrent_writers(tmp_path):
    folder = tmp_path / 'store'
    kids = [subprocess.Popen([sys.executable, '-c', STORE_CHILD, str(folder), tag]) for tag in ('a', 'b')]
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            with sqlite3.connect(folder / 'index.sqlite', timeout=5) as c:
                if c.execute('SELECT COUNT(*) FROM rows').fetchone()[0] >= 2000: break
        except sqlite3.OperationalError: pass
    for k in kids: os.kill(k.pid, signal.SIGKILL); k.wait()
    store = EmbeddingStore(folder, 32)
    rows = dict(store._conn.execute('SELECT hash, row FROM rows'))
    n = len(rows)
    assert n >= 2000 and sorted(rows.values()) == list(range(n))   # rows contiguous: no gap, no duplicate
    hs = list(rows)
    np.testing.assert_array_equal(store.vectors([rows[h] for h in hs]), np.stack([_vec(h) for h in hs]))   # none torn
    new = [text_hash(f'new-{i}') for i in range(5)]
    store.add(new, np.stack([_vec(h) for h in new]))                # a later writer drops any orphan bytes first
    r = store.lookup(new)
    np.testing.assert_array_equal(store.vectors([r[h] for h in new]), np.stack([_vec(h) for h in new]))
    assert os.path.getsize(folder / 'vectors.f32') == (n + 5) * 32 * 4


# ---------------------------------------------------------------- the transformers backend (one SmolLM2 load)
@pytest.fixture(scope='module')
def smol():
    # float32: batch independence is exact there. In bfloat16 (the CPU default where it is native, see 02_llm) the
    # padding of a batch changes the order of summation, and a greedy text can differ in its last tokens.
    return load_llm(LLMConfig(model='smollm2', batch_size=4, dtype='float32'))   # torch's default threads, as ci


def test_smol_bf16_runs_where_native():
    from mrrec.llm import native_bf16
    if not native_bf16('cpu'): pytest.skip('no native bfloat16 on this CPU: auto is float32 here')
    llm = load_llm(LLMConfig(model='smollm2', batch_size=4))
    assert llm.dtype == 'bfloat16'
    g = llm.generate(convs('Name a warm hat.'), max_new_tokens=8)[0]
    assert 0 < g.output_tokens <= 8 and g.text.strip()


def test_smol_batched_greedy_matches_one_at_a_time(smol):
    cs = convs('Name a warm hat.', 'What is a good travel mug? Answer in one sentence.', 'Say hello.')
    batched = smol.generate(cs, max_new_tokens=12)
    single = [smol.generate([c], max_new_tokens=12)[0] for c in cs]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.input_tokens for g in batched] == [g.input_tokens for g in single] == smol.count_tokens([smol.apply_template(c) for c in cs])
    assert all(0 < g.output_tokens <= 12 for g in batched)


def test_smol_seeded_sampling_is_reproducible_and_batch_independent(smol):
    cs = convs('Describe a cap.', 'Describe a mug.')
    a = smol.generate(cs, temperature=1.0, seed=3, max_new_tokens=10)
    b = smol.generate(cs[1:], temperature=1.0, seed=3, max_new_tokens=10)
    c = smol.generate(cs[:1] * 2, temperature=1.0, seed=4, max_new_tokens=10)
    assert b[0].text == a[1].text
    assert c[0].text != c[1].text                     # two rollouts of one prompt differ


def test_smol_cache_and_ledger(smol, tmp_path):
    from mrrec.backends import TransformersLLM
    llm = TransformersLLM(smol.cfg, ResponseCache(tmp_path / 'c.sqlite'), Ledger(tmp_path / 'calls.jsonl'))
    cs = convs('Name a fruit.', 'Name a colour.')
    first = llm.generate(cs, max_new_tokens=6, stage='s1')
    again = llm.generate(cs, max_new_tokens=6, stage='s2')
    other = llm.generate(cs[:1], max_new_tokens=7, stage='s2')             # another limit is another request
    assert not any(g.cached for g in first) and all(g.cached for g in again) and not other[0].cached
    assert [g.text for g in again] == [g.text for g in first]
    s = Ledger(tmp_path / 'calls.jsonl').summary().set_index('stage')
    assert s.loc['s1', 'requests'] == 2 and s.loc['s1', 'cached'] == 0 and s.loc['s1', 'output_tokens'] == sum(g.output_tokens for g in first)
    assert s.loc['s2', 'requests'] == 3 and s.loc['s2', 'cached'] == 2 and s.loc['s2', 'calls'] == 2


def test_smol_tools_through_the_system_prompt(smol):
    assert smol.supports_tools is False                   # SmolLM2's template ignores tools
    prompt = smol.apply_template([{'role': 'user', 'content': 'Find a hat.'}], tools=[TOOL])
    assert '<tools>' in prompt and '"search_memory"' in prompt and prompt.rstrip().endswith('assistant')


PROFILE_START = '\\boxed{"ideal_item_profile": "'


def _greedy_reference(llm, prompt: str, max_new_tokens: int, repetition_penalty: float = 1.0) -> str:
    "What transformers' own greedy generate writes after `prompt` (eos and what follows dropped)."
    import torch
    ids = llm.tokenizer(prompt, return_tensors='pt', add_special_tokens=False)
    with torch.inference_mode():
        out = llm.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=repetition_penalty,
                                 pad_token_id=llm.tokenizer.pad_token_id, eos_token_id=llm.eos_ids)
    new = out[0, ids['input_ids'].shape[1]:].tolist()
    end = next((i for i, t in enumerate(new) if t in llm.eos_ids), len(new))
    return llm.tokenizer.decode(new[:end], skip_special_tokens=True)


def test_smol_continues_a_partial_assistant_message(smol, tmp_path):
    from mrrec.backends import TransformersLLM
    llm = TransformersLLM(smol.cfg, ResponseCache(tmp_path / 'c.sqlite'))
    ask = convs('I want a warm hat for winter dog walks. Describe the ideal hat.')[0]
    partial = ask + [{'role': 'assistant', 'content': PROFILE_START}]
    prompt = llm.apply_template(partial)
    assert prompt == llm.apply_template(ask) + PROFILE_START             # the start right after the header, no end of turn
    free, cont = llm.generate([ask, partial], max_new_tokens=20)
    assert cont.text == _greedy_reference(llm, prompt, 20)                # the model's continuation of that prompt ...
    assert not cont.text.startswith(PROFILE_START[:7]) and cont.text != free.text   # ... without the start
    assert cont.input_tokens == llm.count_tokens([prompt])[0]
    assert len(llm.cache) == 2                                            # with and without the start: two entries
    again = llm.generate([partial, ask], max_new_tokens=20)
    assert all(g.cached for g in again) and [g.text for g in again] == [cont.text, free.text]
    mixed = llm.generate([convs('Say hello.')[0], partial], max_new_tokens=20, use_cache=False)   # batched with a plain request
    assert mixed[1].text == cont.text


def test_smol_tool_call_begun_in_the_start_is_parsed(smol):
    start = '<tool_call>\n{"name": "search_memory", "arguments": {"aspects": ["'
    ids = smol.tokenizer('fit", "warmth"]}}\n</tool_call>', add_special_tokens=False)['input_ids']
    g = smol._decode(ids, 10, SamplingParams(64, 0.0, 1.0), 0.1, [TOOL], 'k' * 32, start)
    assert g.text.startswith('fit"') and g.finish_reason == 'tool_calls'
    assert [(c['name'], c['arguments']) for c in g.tool_calls] == [('search_memory', {'aspects': ['fit', 'warmth']})]
    assert smol._decode(ids, 10, SamplingParams(64, 0.0, 1.0), 0.1, [TOOL], 'k' * 32).tool_calls == []   # not without it


def test_smol_repetition_penalty_is_applied_and_keyed(smol, tmp_path):
    import dataclasses
    from mrrec.backends import TransformersLLM
    llm = TransformersLLM(dataclasses.replace(smol.cfg, repetition_penalty=1.2), ResponseCache(tmp_path / 'c.sqlite'))
    c = convs('Describe a small, everyday item that is made for everyday use.')
    pen = llm.generate(c, max_new_tokens=24)[0]
    off = llm.generate(c, max_new_tokens=24, repetition_penalty=1.0)[0]
    assert not off.cached and len(llm.cache) == 2                         # the penalty is part of the key
    prompt = llm.apply_template(c[0])
    assert pen.text == _greedy_reference(llm, prompt, 24, 1.2) and off.text == _greedy_reference(llm, prompt, 24, 1.0)
    assert pen.text != off.text


def test_bench_cli_runs(capsys):
    assert bench_llm_main(['--n', '2', '--batch-size', '2', '--max-new-tokens', '3']) == 0
    out = capsys.readouterr().out
    assert 'one at a time' in out and 'batched (2)' in out and 'x;' in out


# ---------------------------------------------------------------- embeddings and simplification
def test_minilm_embedder(tmp_path, monkeypatch):
    e = load_embedder(EmbedConfig(model='minilm', batch_size=2), cache_dir=tmp_path)
    v = e.encode(['a wool hat', 'a wool hat', 'a kettle'])
    assert v.dtype == np.float32 and v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert e.stats() == {'hits': 0, 'misses': 2, 'stored': 2}             # a repeated text is encoded once
    assert load_embedder(EmbedConfig(model='minilm'), cache_dir=tmp_path).encode(['a kettle']).tolist() == v[2:].tolist()
    import mrrec.embed
    monkeypatch.setattr(mrrec.embed, 'EMBED_CHUNK', 2)                        # a large pool is stored chunk by chunk
    docs = [f'item number {i}' for i in range(5)]
    np.testing.assert_allclose(e.encode(docs + ['a kettle']), np.vstack([load_embedder(EmbedConfig(model='minilm')).encode(docs), v[2:]]), atol=1e-5)
    assert e.stats() == {'hits': 1, 'misses': 7, 'stored': 7}
    with pytest.raises(ValueError, match="kind"): e.encode(['x'], kind='item')
    with pytest.raises(TypeError, match='text 1'): e.encode(['x', None])


class CutScriptedLLM(ScriptedLLM):
    "mrrec.fakes.ScriptedLLM whose answers ending in '...' are cut by the token limit (finish reason 'length')."
    def _one(self, conv, tools, stop, stage) -> Generation:
        g = super()._one(conv, tools, stop, stage)
        if g.text.endswith('...'): g.finish_reason = 'length'
        return g


def answers_by_request(queries, answers):
    "A reply function: the answer of the query whose simplification request the conversation ends with."
    by_query = dict(zip(queries, answers))
    return lambda conv: by_query[conv[-1]['content'].rsplit('Request: ', 1)[1]]


def test_simplify_queries_counts_failures_and_falls_back():
    q = pd.DataFrame({'query': ["I want a grey Carhartt beanie under $20 for dog walks in the cold",
                                "Looking for a 20 oz Contigo travel mug that keeps coffee hot on my commute",
                                "A waterproof navy Columbia rain jacket, slim fit, for cycling to work",
                                "Two-person backpacking tent under 2 kg for summer trips"]})
    out = simplify_queries(q, CutScriptedLLM(answers_by_request(q['query'], [
        'Query: "a beanie for dog walks"', '', 'a very long answer that goes on and on...', 'a blender for smoothies'])))
    assert out.simplify_status.tolist() == ['ok', 'empty', 'truncated', 'off_topic']
    assert out.query_simplified.tolist() == ['a beanie for dog walks'] + q['query'].tolist()[1:]
    with pytest.raises(KeyError, match='no column'):
        simplify_queries(q.rename(columns={'query': 'q'}), ScriptedLLM(lambda conv: ''))
