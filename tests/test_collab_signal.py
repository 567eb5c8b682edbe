"SynthC4's collaborative signal ([data] collab_strength): off by default with not one byte changed, and real when on."
import hashlib
import json

import numpy as np
import pytest

from mrrec.metrics import bootstrap_ci
from mrrec.synthc4 import SynthConfig, generate_synthc4, read_latent_preferences, synth_files

SMALL = dict(n_items=600, n_queries=20)
# sha256 of the folder SynthC4 wrote for SMALL at seed 3 before the knob existed (commit be3b78c): files in name
# order, each its relative path then its bytes. A deliberate change of the generator (SYNTH_VERSION bumped) changes it.
BEFORE_THE_KNOB = '91c1f144deeb17088ef0532208ec35e4a33050b1e3eb049c0b70526259ee9859'


def folder_hash(d) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob('*')):
        if p.is_file(): h.update(str(p.relative_to(d)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def test_knob_at_zero_changes_no_byte(tmp_path):
    generate_synthc4(tmp_path / 'absent', SynthConfig(**SMALL), seed=3, progress=False)
    generate_synthc4(tmp_path / 'zero', SynthConfig(**SMALL, collab_strength=0.0), seed=3, progress=False)
    assert folder_hash(tmp_path / 'absent') == folder_hash(tmp_path / 'zero') == BEFORE_THE_KNOB
    generate_synthc4(tmp_path / 'on', SynthConfig(**SMALL, collab_strength=0.5), seed=3, progress=False)
    assert folder_hash(tmp_path / 'on') != BEFORE_THE_KNOB
    info = json.loads((tmp_path / 'on' / 'synth_info.json').read_text())
    assert info['signature']['collab_strength'] == 0.5


def graph(d):
    "Per user: the items they reviewed strictly before their query's review (the leak-free history), and the queries."
    f = synth_files(d)
    queries = [json.loads(l) for l in f['queries'].read_text().splitlines()]
    reviews = [json.loads(l) for p in f['reviews'] for l in p.read_text().splitlines()]
    query_ts = {r['user_id']: r['timestamp'] for r in reviews for q in queries
                if r['user_id'] == q['user_id'] and r['parent_asin'] == q['item_id']}
    hist = {}
    for r in reviews:
        if r['timestamp'] < query_ts[r['user_id']]: hist.setdefault(r['user_id'], set()).add(r['parent_asin'])
    return hist, queries


def knn_hit1(hist: dict, queries: list, seed: int = 0) -> np.ndarray:
    """User-kNN on the 1-of-10 protocol (the target and 9 items other users reviewed, seeded): a candidate's score is the
    mean cosine similarity of its reviewers to the user (normalised by its degree, so popularity alone scores nothing);
    ties are broken at random. Per query: 1 if the target ranks first."""
    rng = np.random.default_rng(seed)
    users = sorted(hist)
    items = sorted(set().union(*hist.values()))
    col = {i: k for k, i in enumerate(items)}
    X = np.zeros((len(users), len(items)))
    for r, u in enumerate(users): X[r, [col[i] for i in hist[u]]] = 1
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    row = {u: r for r, u in enumerate(users)}
    hits = []
    for q in queries:
        u, tgt = row[q['user_id']], q['item_id']
        others = [i for i in items if i not in hist[q['user_id']] and i != tgt]
        cands = [tgt] + list(rng.choice(others, 9, replace=False))
        sim = Xn @ Xn[u]; sim[u] = 0
        scores = []
        for i in cands:
            buyers = X[:, col[i]] if i in col else np.zeros(len(users))
            buyers[u] = 0
            scores.append(sim @ buyers / buyers.sum() if buyers.sum() else 0.0)
        scores = np.array(scores) + 1e-9 * rng.random(10)
        hits.append(float(np.argmax(scores) == 0))
    return np.array(hits)


def shuffled(hist: dict, seed: int = 0) -> dict:
    "The control: every edge keeps its user, its item is drawn from a permutation of all edges' items (degrees kept)."
    rng = np.random.default_rng(seed)
    edges = [(u, i) for u in sorted(hist) for i in sorted(hist[u])]
    perm = rng.permutation([i for _, i in edges])
    out = {}
    for (u, _), i in zip(edges, perm): out.setdefault(u, set()).add(i)
    return out


@pytest.fixture(scope='module')
def collab_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp('collab')
    generate_synthc4(d, SynthConfig(n_items=3000, n_queries=240, collab_strength=0.6), seed=0, progress=False)
    return d


def test_members_of_a_taste_cluster_share_items(collab_folder):
    prefs = read_latent_preferences(synth_files(collab_folder)['preferences'])
    lines = synth_files(collab_folder)['preferences'].read_text().splitlines()
    of = {r['user_id']: r['taste_cluster'] for r in map(json.loads, lines)}   # ground truth, for this check only
    assert set(of) == set(prefs['user_id'])
    hist, _ = graph(collab_folder)
    same = [len(hist[u] & hist[v]) for u in hist for v in hist if u < v and of[u] == of[v] >= 0]
    other = [len(hist[u] & hist[v]) for u in hist for v in hist if u < v and of[u] != of[v]]
    assert np.mean(same) > 1.0 and np.mean(same) > 5 * np.mean(other), (np.mean(same), np.mean(other))


def test_user_knn_beats_random_and_a_shuffled_graph_does_not(collab_folder):
    hist, queries = graph(collab_folder)
    on = knn_hit1(hist, queries)
    control = knn_hit1(shuffled(hist), queries)
    lo_on, _ = bootstrap_ci(on, 1000, seed=0)
    lo_c, hi_c = bootstrap_ci(control, 1000, seed=0)
    print(f'user-kNN Hit@1 {on.mean():.3f} from {lo_on:.3f}; shuffled {control.mean():.3f} [{lo_c:.3f}, {hi_c:.3f}]')
    assert lo_on > 0.1, f"user-kNN Hit@1 {on.mean():.3f}, interval from {lo_on:.3f}: no better than random (0.1)"
    assert lo_c <= 0.1 and control.mean() < on.mean() - 0.1, \
        f"shuffled-graph Hit@1 {control.mean():.3f} [{lo_c:.3f}, {hi_c:.3f}] beats random: the signal is not the graph's"
