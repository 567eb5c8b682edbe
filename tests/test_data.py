"""Tests of the data stage (mrrec.data), the readers (mrrec.readers) and SynthC4 (mrrec.synthc4): readers and their
errors, the history join, splits, the generator, the stage itself."""
import dataclasses, gzip, hashlib, json, re, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mrrec.core import ConfigError, load_profile, main, start_run
from mrrec.data import (DataConfig, DataUnavailableError, HISTORY_COLUMNS, SPLITS, bm25_recall, data_path,
                        download_amazon_reviews, download_c4, join_history, load_data, prepare_data, simplify_queries,
                        split_queries)
from mrrec.readers import (META_COLUMNS, POOL_COLUMNS, QUERY_COLUMNS, REVIEW_COLUMNS, DataFormatError, read_c4_queries,
                           read_item_meta, read_item_pool, read_reviews)
from mrrec.synthc4 import (CATALOG, SynthConfig, ensure_synthc4, generate_synthc4, oracle_profiles,
                           read_latent_preferences, synth_files, synth_main, synth_signature)

SAMPLES = data_path('data/samples')
SMALL = DataConfig(n_items=900, n_queries=30)


@pytest.fixture(scope='module')
def ci_synth(tmp_path_factory):
    "SynthC4 at the ci profile's size and seed."
    prof = load_profile('ci')
    d = tmp_path_factory.mktemp('ci_synth')
    generate_synthc4(d, prof.section(DataConfig).synth_config(), prof.seed, progress=False)
    return d


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


# ---------------------------------------------------------------- SynthC4

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (generate_synthc4(tmp_path / n, SMALL.synth_config(), seed, progress=False) and _digest(tmp_path / n)
               for n, seed in (('a', 7), ('b', 7), ('c', 8)))
    assert a == b
    assert len(a) >= 9                       # queries x2, pool, preferences, info, reviews and meta per category
    assert a['item_pool.jsonl'] != c['item_pool.jsonl'] and a['queries.jsonl'] != c['queries.jsonl']


def test_ensure_reuses_a_matching_folder_and_regenerates_otherwise(tmp_path):
    ensure_synthc4(tmp_path, SMALL.synth_config(), 1, progress=False)
    pool = tmp_path / 'item_pool.jsonl'
    before = pool.stat().st_mtime_ns
    ensure_synthc4(tmp_path, SMALL, 1, progress=False)
    assert pool.stat().st_mtime_ns == before
    ensure_synthc4(tmp_path, SMALL, 2, progress=False)
    assert pool.stat().st_mtime_ns != before


def test_real_readers_round_trip_synthc4(ci_synth):
    f = synth_files(ci_synth)
    raw_q = [json.loads(l) for l in f['queries'].read_text().splitlines()]
    q = read_c4_queries(f['queries'])
    assert list(q.columns) == list(QUERY_COLUMNS) and len(q) == len(raw_q) == 110
    assert q.to_dict('records')[5] == {k: (float(v) if k == 'ori_rating' else v) for k, v in raw_q[5].items()}
    pool = read_item_pool(f['pool'])
    raw_pool = [json.loads(l) for l in f['pool'].read_text().splitlines()]
    assert list(pool.columns) == list(POOL_COLUMNS) and pool.to_dict('records') == raw_pool
    reviews = pd.concat([read_reviews(p) for p in f['reviews']], ignore_index=True)
    meta = pd.concat([read_item_meta(p) for p in f['meta']], ignore_index=True)
    assert list(reviews.columns) == list(REVIEW_COLUMNS) and list(meta.columns) == list(META_COLUMNS)
    assert set(reviews.parent_asin) == set(meta.parent_asin)          # meta for every reviewed item, and only those
    assert q.item_id.isin(pool.item_id).all()
    assert set(pool.category) == {'Clothing', 'Home', 'Tools'}
    # each query's own review exists, rated 5, with ori_review as text (as in Amazon-C4)
    own = q.merge(reviews, left_on=['user_id', 'item_id', 'ori_review'], right_on=['user_id', 'parent_asin', 'text'])
    assert len(own) == len(q) and (own.rating == 5).all()


def test_synthc4_structure_matches_the_design(ci_synth):
    f = synth_files(ci_synth)
    q, pool = read_c4_queries(f['queries']), read_item_pool(f['pool'])
    prefs = read_latent_preferences(f['preferences'])
    pool_text = dict(zip(pool.item_id, pool.metadata.str.lower()))
    for _, p in prefs.iterrows():
        qq = p['queries'][0]
        target = pool_text[qq['target_item_id']]
        # the target carries every preferred value of its category and of the shared aspects
        for v in [x['preferred'] for x in p['shared'].values()] + [x['preferred'] for x in p['categories'][qq['category']].values()]:
            assert v.lower() in target, (v, target)
        # hard negatives: same product type, one value off
        assert len(qq['near_miss_item_ids']) == 4
        for nm in qq['near_miss_item_ids']:
            assert qq['product_type'] in pool_text[nm]
        assert p['shared']['price']['preferred'] != p['shared']['price']['disliked']
    # the simplified query names product type and use case only, never a preferred value
    joined = q.merge(prefs.assign(qid=prefs.queries.map(lambda x: x[0]['qid'])), on='qid')
    for _, r in joined.iterrows():
        text = r['query'].lower()
        assert r['queries'][0]['product_type'] in text and r['queries'][0]['use_case'].lower() in text
        assert not any(v['preferred'] in text.split() for v in r['shared'].values())
    detailed = read_c4_queries(f['queries_detailed'])
    assert (detailed['query'].str.len() > q['query'].str.len()).all() and (detailed.item_id == q.item_id).all()


def test_bm25_oracle_profile_beats_query_alone_at_ci_size(ci_synth):
    f = synth_files(ci_synth)
    q, pool = read_c4_queries(f['queries']), read_item_pool(f['pool'])
    assert len(pool) == 2000
    oracle = oracle_profiles(q, read_latent_preferences(f['preferences']))
    r_query, _ = bm25_recall(pool, q['query'], q['item_id'], k=100)
    r_oracle, _ = bm25_recall(pool, oracle, q['item_id'], k=100)
    print(f"BM25 R@100 on SynthC4 (ci): query only {r_query:.3f}, oracle profile {r_oracle:.3f}")
    assert r_query < 0.5
    assert r_oracle >= 0.7
    assert r_oracle >= 2 * r_query


def test_histories_reveal_preferences_through_ratings(ci_synth):
    "Ratings follow preference match: items in the user's preferred price band are rated higher than those in the disliked one."
    f = synth_files(ci_synth)
    prefs = read_latent_preferences(f['preferences']).set_index('user_id')
    reviews = pd.concat([read_reviews(p) for p in f['reviews']], ignore_index=True)
    pool = read_item_pool(f['pool'])
    band = pool.set_index('item_id').metadata.str.extract(r'(?:Priced in the (\S+) range|Sits at a (\S+) price point)').bfill(axis=1)[0]
    r = reviews.assign(band=reviews.parent_asin.map(band),
                       preferred=reviews.user_id.map(prefs.shared.map(lambda d: d['price']['preferred'])),
                       disliked=reviews.user_id.map(prefs.shared.map(lambda d: d['price']['disliked'])))
    liked, disliked = r[r.band == r.preferred].rating, r[r.band == r.disliked].rating
    assert r.band.notna().all() and len(liked) > 50 and len(disliked) > 20
    assert liked.mean() > disliked.mean() + 0.5, (liked.mean(), disliked.mean())


def test_cli_writes_synthc4_and_refuses_bad_settings(tmp_path, capsys):
    assert main(['synth', '--profile', 'ci', '--out', str(tmp_path / 's'), '--items', '500', '--queries', '12', '--seed', '3', '--quiet']) == 0
    info = json.loads((tmp_path / 's' / 'synth_info.json').read_text())
    assert info['signature']['seed'] == 3 and info['counts']['items'] == 500 and info['synthetic'] is True
    assert synth_main(['--profile', 'ci', '--out', str(tmp_path / 't'), '--types', '9', '--quiet']) == 2
    assert 'types_per_category' in capsys.readouterr().err
    # too few items for the queries' targets is a clear configuration error, not a crash
    assert synth_main(['--profile', 'ci', '--out', str(tmp_path / 'u'), '--items', '30', '--queries', '40', '--quiet']) == 2


def test_synth_config_is_the_data_tables_synthc4_keys():
    assert DataConfig().synth_config() == SynthConfig()
    assert SMALL.synth_config() == SynthConfig(n_items=900, n_queries=30)
    # a DataConfig is accepted where a SynthConfig is expected, and the signature is the same (cached folders stay valid)
    assert synth_signature(SMALL, 3) == synth_signature(SMALL.synth_config(), 3)
    assert list(synth_signature(SMALL, 3)) == ['generator', 'version', 'seed', 'n_items', 'n_queries', 'n_categories',
                                               'types_per_category', 'categories_per_user', 'history_length',
                                               'noise_fraction', 'near_misses_per_target', 'post_query_max']
    with pytest.raises(ConfigError, match='n_categories'): SynthConfig(n_categories=29)
    with pytest.raises(ConfigError, match='n_categories'): DataConfig(n_categories=29)


def test_catalogue_is_package_data():
    import importlib.resources
    text = importlib.resources.files('mrrec').joinpath('synthc4_catalog.txt').read_text(encoding='utf-8')
    assert text.count('==') == len(CATALOG) - 1 == 27 and CATALOG[0].name == 'Clothing'


def test_import_order_synthc4_data_llm():
    code = ("import sys, mrrec.synthc4; assert 'mrrec.data' not in sys.modules; "
            "import mrrec.data; assert not {'mrrec.llm', 'mrrec.backends'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, '-c', code], check=True)
    src = Path(__import__('mrrec.data').data.__file__).read_text()
    assert not re.search(r'(from|import) +(mrrec)?\.?(llm|backends)\b', src)


# ---------------------------------------------------------------- readers

def test_samples_load_in_every_format():
    q_csv = read_c4_queries(SAMPLES / 'amazon_c4/test.csv')
    q_jsonl = read_c4_queries(SAMPLES / 'amazon_c4/queries.jsonl')
    pd.testing.assert_frame_equal(q_csv, q_jsonl)
    assert q_csv.ori_review[1].endswith('"just like grandma\'s".')          # CSV quoting survives
    rv = read_reviews(SAMPLES / 'amazon_reviews_2023/raw/review_categories/Pet_Supplies.jsonl.gz')
    assert rv.images[2][0]['attachment_type'] == 'IMAGE'
    meta = read_item_meta(SAMPLES / 'amazon_reviews_2023/raw/meta_categories/meta_Pet_Supplies.jsonl')
    assert meta.price.isna().tolist() == [False, True, True, False]


MARKUP = SAMPLES / 'markup'
MARKUP_FILES = [(read_c4_queries, 'test.csv'), (read_item_pool, 'sampled_item_metadata_1M.jsonl'),
                (read_reviews, 'raw/review_categories/Office_Products.jsonl'),
                (read_item_meta, 'raw/meta_categories/meta_Office_Products.jsonl')]
_TEXT = {read_c4_queries: ('query', 'ori_review'), read_item_pool: ('metadata',), read_reviews: ('title', 'text'),
         read_item_meta: ('title', 'features', 'description')}
_MARKUP_RE = re.compile(r'<(?:br|b|i|p)\b|&(?:[a-z]+|#[0-9]+);|\[\[VIDEOID:|""|\s\s')


def _texts(df, fields):
    "Every text of `fields`, list fields flattened."
    out = []
    for f in fields:
        for v in df[f]:
            out += [x for x in (v if isinstance(v, (list, np.ndarray)) else [v]) if isinstance(x, str)]
    return out


@pytest.mark.parametrize('reader,path', MARKUP_FILES)
def test_markup_samples_are_cleaned_and_the_raw_text_kept(reader, path):
    fields = _TEXT[reader]
    clean, raw = reader(MARKUP / path), reader(MARKUP / path, clean=False)
    pd.testing.assert_frame_equal(clean, reader(MARKUP / path, errors='skip'))       # the fast path and the scan agree
    assert raw.attrs['cleaned'] == {} and not [c for c in raw.columns if c.endswith('_raw')]
    assert any(_MARKUP_RE.search(t) for t in _texts(raw, fields))                     # the samples carry markup
    assert not any(_MARKUP_RE.search(t) for t in _texts(clean, fields))              # and cleaning removes it
    for f in fields:
        changed = clean.attrs['cleaned'][f]
        if changed:
            assert _texts(clean, [f + '_raw']) == _texts(raw, [f])                       # the text as read, for audit
        assert (f + '_raw' in clean) == bool(changed)


def test_share_of_sample_texts_changed_by_cleaning():
    "Every sample folder: the share of text values that cleaning changes (the markup samples: most of them)."
    shares = {}
    for folder, files in (('markup', MARKUP_FILES), ('amazon_c4', [(read_c4_queries, 'test.csv'),
                                                                   (read_item_pool, 'sampled_item_metadata_1M.jsonl')])):
        n = changed = 0
        for reader, path in files:
            a, b = _texts(reader(SAMPLES / folder / path, clean=False), _TEXT[reader]), \
                _texts(reader(SAMPLES / folder / path), _TEXT[reader])
            n += len(a); changed += sum(x != y for x, y in zip(a, b))
        shares[folder] = changed / n
    print('share of sample texts changed by cleaning:', shares)
    assert shares['markup'] > 0.5 and shares['amazon_c4'] < 0.2


def test_cleaning_changes_no_synthc4_text(ci_synth):
    f = synth_files(ci_synth)
    for reader, paths in ((read_c4_queries, [f['queries'], f['queries_detailed']]), (read_item_pool, [f['pool']]),
                          (read_reviews, f['reviews']), (read_item_meta, f['meta'])):
        for p in paths:
            a, b = reader(p), reader(p, clean=False)
            assert a.attrs['cleaned'] == {k: 0 for k in _TEXT[reader]}, p
            pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize('reader,path', [
    (read_c4_queries, 'amazon_c4/test.csv'), (read_c4_queries, 'amazon_c4/queries.jsonl'),
    (read_item_pool, 'amazon_c4/sampled_item_metadata_1M.jsonl'),
    (read_reviews, 'amazon_reviews_2023/raw/review_categories/Pet_Supplies.jsonl.gz'),
    (read_reviews, 'amazon_reviews_2023/raw/review_categories/Home_and_Kitchen.jsonl'),
    (read_item_meta, 'amazon_reviews_2023/raw/meta_categories/meta_Pet_Supplies.jsonl'),
    (read_item_meta, 'amazon_reviews_2023/raw/meta_categories/meta_Home_and_Kitchen.jsonl')])
def test_fast_path_and_validating_scan_give_the_same_frame(reader, path):
    fast = reader(SAMPLES / path)                    # pyarrow
    scan = reader(SAMPLES / path, errors='skip')     # the line-by-line scan (used when skipping)
    assert fast.attrs['skipped']['count'] == scan.attrs['skipped']['count'] == 0
    pd.testing.assert_frame_equal(fast, scan)


def test_valid_files_take_the_fast_path(caplog):
    with caplog.at_level('DEBUG', logger='mrrec.readers'):
        read_c4_queries(SAMPLES / 'amazon_c4/test.csv')
        read_item_meta(SAMPLES / 'amazon_reviews_2023/raw/meta_categories/meta_Pet_Supplies.jsonl', parent_asins=['B05SMPPET4'])
        read_reviews(SAMPLES / 'amazon_reviews_2023/raw/review_categories/Pet_Supplies.jsonl.gz', user_ids=['AEK7WQ2ZNR5TXM3VBLJ8HCPY6FGA'])
    assert 'fast path declined' not in caplog.text


def test_pool_strings_stay_in_arrow(ci_synth):
    pool = read_item_pool(synth_files(ci_synth)['pool'])
    assert all(isinstance(pool[c].array, pd.arrays.ArrowStringArray) for c in POOL_COLUMNS)


def _write(path: Path, lines: list[bytes]) -> Path:
    data = b''.join(l + b'\n' for l in lines)
    if path.suffix == '.gz':
        with gzip.GzipFile(path, 'wb', mtime=0) as f: f.write(data)
    else: path.write_bytes(data)
    return path

POOL_OK = [json.dumps({'item_id': f'B{i:03d}', 'category': 'Pet', 'metadata': f'item number {i}'}).encode() for i in range(6)]
BAD_POOL = {
    'invalid_json': (POOL_OK[:2] + [b'{"item_id": "B900", "category": "Pet", "metadata": "cut off'] + POOL_OK[2:], 3, None),
    'missing_field': (POOL_OK[:4] + [b'{"item_id": "B900", "metadata": "no category"}'] + POOL_OK[4:], 5, 'category'),
    'null_field': (POOL_OK[:1] + [b'{"item_id": "B900", "category": null, "metadata": "x"}'], 2, 'category'),
    'wrong_type': (POOL_OK[:3] + [b'{"item_id": 900, "category": "Pet", "metadata": "x"}'], 4, 'item_id'),
    'duplicate_id': (POOL_OK + [POOL_OK[2]], 7, 'item_id'),
    'invalid_utf8': (POOL_OK[:5] + [b'{"item_id": "B900", "category": "Pet", "metadata": "caf\xe9"}'], 6, None),
    'not_an_object': (POOL_OK[:2] + [b'["B900", "Pet"]'], 3, None),
    'lone_surrogate': (POOL_OK[:3] + [b'{"item_id": "B900", "category": "Pet", "metadata": "half an emoji \\ud83d"}'], 4, 'metadata'),
}

@pytest.mark.parametrize('suffix', ['.jsonl', '.jsonl.gz'])
@pytest.mark.parametrize('kind', sorted(BAD_POOL))
def test_bad_pool_line_is_one_clear_error(tmp_path, kind, suffix):
    lines, line, fld = BAD_POOL[kind]
    path = _write(tmp_path / f'pool{suffix}', lines)
    with pytest.raises(DataFormatError) as ei: read_item_pool(path)
    e = ei.value
    assert (e.path, e.line, e.field) == (path, line, fld)
    assert e.kind == {'null_field': 'missing_field', 'lone_surrogate': 'invalid_utf8'}.get(kind, kind)
    assert str(path) in str(e) and f'line {line}' in str(e) and (fld is None or f"'{fld}'" in str(e))
    skipped = read_item_pool(path, errors='skip')
    assert skipped.attrs['skipped']['count'] == 1
    assert len(skipped) == len(lines) - 1 and skipped.item_id.is_unique


def test_blank_lines_count_in_line_numbers(tmp_path):
    path = _write(tmp_path / 'pool.jsonl', POOL_OK[:2] + [b'', b'   '] + [b'{"item_id": "B900"}'])
    with pytest.raises(DataFormatError) as ei: read_item_pool(path)
    assert ei.value.line == 5
    assert len(read_item_pool(_write(tmp_path / 'ok.jsonl', POOL_OK[:2] + [b'', b'  '] + POOL_OK[2:]))) == 6


def test_skip_reports_every_reason(tmp_path, caplog):
    lines = POOL_OK[:2] + [b'garbage', b'{"item_id": "B901"}', b'{"item_id": 5, "category": "Pet", "metadata": ""}', POOL_OK[0]] + POOL_OK[2:]
    with caplog.at_level('WARNING', logger='mrrec.readers'):
        df = read_item_pool(_write(tmp_path / 'pool.jsonl', lines), errors='skip')
    assert df.item_id.tolist() == [f'B{i:03d}' for i in range(6)]
    assert df.attrs['skipped']['reasons'] == {'invalid_json': 1, 'missing_field': 1, 'wrong_type': 1, 'duplicate_id': 1}
    assert 'skipped 4 bad line(s)' in caplog.text and 'line 3' in caplog.text


@pytest.mark.parametrize('rows,line,fld,kind', [
    ([b'1,a query,B1,U1,5,fine', b'2,,B2,U2,5,empty query'], 3, 'query', 'missing_field'),
    ([b'1,a query,B1,U1,5,fine', b'2,q,B2,U2,five,rating as a word'], 3, 'ori_rating', 'wrong_type'),
    ([b'1,a query,B1,U1,5,"a review', b'over two lines"', b'1,again,B3,U3,5,dup'], 4, 'qid', 'duplicate_id'),
    ([b'1,a query,B1,U1,5,ok', b'2,caf\xe9,B2,U2,5,latin-1 bytes'], 3, None, 'invalid_utf8'),
])
def test_bad_csv_queries(tmp_path, rows, line, fld, kind):
    path = _write(tmp_path / 'test.csv', [b'qid,query,item_id,user_id,ori_rating,ori_review'] + rows)
    with pytest.raises(DataFormatError) as ei: read_c4_queries(path)
    assert (ei.value.line, ei.value.field, ei.value.kind) == (line, fld, kind)
    assert len(read_c4_queries(path, errors='skip')) == 1


def test_csv_header_without_a_required_column(tmp_path):
    path = _write(tmp_path / 'test.csv', [b'qid,query,user_id', b'1,q,U1'])
    with pytest.raises(DataFormatError) as ei: read_c4_queries(path)
    assert (ei.value.line, ei.value.field) == (1, 'item_id')


def test_bad_review_and_meta_lines(tmp_path):
    ok = json.dumps({'rating': 5.0, 'title': 't', 'text': 'x', 'images': [], 'asin': 'B1', 'parent_asin': 'B1',
                     'user_id': 'U1', 'timestamp': 1, 'helpful_vote': 0, 'verified_purchase': True}).encode()
    bad_ts = ok.replace(b'"timestamp": 1', b'"timestamp": "yesterday"')
    with pytest.raises(DataFormatError) as ei: read_reviews(_write(tmp_path / 'r.jsonl.gz', [ok, bad_ts]))
    assert (ei.value.line, ei.value.field, ei.value.kind) == (2, 'timestamp', 'wrong_type')
    # a bad line outside the user filter is still an error: the filter never hides a broken file
    with pytest.raises(DataFormatError): read_reviews(tmp_path / 'r.jsonl.gz', user_ids={'someone else'})
    meta_ok = json.dumps({'title': 'x', 'parent_asin': 'B1', 'price': '12.50', 'details': {'Brand': 'A'}}).encode()
    meta_bad = json.dumps({'title': 'y', 'parent_asin': 'B2', 'price': None, 'features': 'not a list'}).encode()
    with pytest.raises(DataFormatError) as ei: read_item_meta(_write(tmp_path / 'meta.jsonl', [meta_ok, meta_bad]))
    assert (ei.value.line, ei.value.field) == (2, 'features')
    meta_bad_details = json.dumps({'parent_asin': 'B3', 'details': 7}).encode()
    with pytest.raises(DataFormatError) as ei: read_item_meta(_write(tmp_path / 'meta2.jsonl', [meta_ok, meta_bad_details]))
    assert (ei.value.line, ei.value.field) == (2, 'details')
    assert read_item_meta(tmp_path / 'meta.jsonl', errors='skip').price.tolist() == [12.5]


def test_truncated_gzip_is_reported(tmp_path):
    lines = [json.dumps({'item_id': f'B{i:05d}', 'category': 'Pet', 'metadata': f'item {i} ' * 20}).encode() for i in range(3000)]
    path = _write(tmp_path / 'pool.jsonl.gz', lines)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFormatError) as ei: read_item_pool(path)
    assert ei.value.kind == 'corrupt_file' and ei.value.path == path and ei.value.line > 2000


def test_empty_file_is_an_empty_frame(tmp_path):
    df = read_item_pool(_write(tmp_path / 'pool.jsonl', []))
    assert len(df) == 0 and list(df.columns) == list(POOL_COLUMNS)


def test_reader_filters_keep_only_what_is_asked():
    rv = read_reviews(SAMPLES / 'amazon_reviews_2023/raw/review_categories/Home_and_Kitchen.jsonl', user_ids={'AGB5NJ7RWQ3KZT2XMV8LHCYP4DEF'})
    assert set(rv.user_id) == {'AGB5NJ7RWQ3KZT2XMV8LHCYP4DEF'} and len(rv) == 3
    meta = read_item_meta(SAMPLES / 'amazon_reviews_2023/raw/meta_categories/meta_Pet_Supplies.jsonl', parent_asins=['B05SMPPET4', 'nope'])
    assert meta.parent_asin.tolist() == ['B05SMPPET4'] and meta.price.tolist() == [18.49] and meta.details[0]['Material'] == 'Nylon'


# ---------------------------------------------------------------- history join

def _rev(user, item, ts, text='r'):
    return {'user_id': user, 'parent_asin': item, 'timestamp': ts, 'text': text, 'rating': 4.0, 'title': 't', 'asin': item,
            'helpful_vote': 0, 'verified_purchase': True}

def test_history_is_strictly_before_the_query_review():
    queries = pd.DataFrame([{'qid': 1, 'user_id': 'u', 'item_id': 'T', 'ori_review': 'the one'},
                            {'qid': 2, 'user_id': 'v', 'item_id': 'T', 'ori_review': 'x'},      # v never reviewed T
                            {'qid': 3, 'user_id': 'w', 'item_id': 'S', 'ori_review': 'second'}])
    reviews = pd.DataFrame([_rev('u', 'A', 10), _rev('u', 'B', 20), _rev('u', 'C', 30),        # tie with the query review
                            _rev('u', 'T', 30, 'the one'), _rev('u', 'D', 40), _rev('u', 'T', 5, 'earlier T'),
                            _rev('v', 'A', 1), _rev('v', 'B', 2),
                            _rev('w', 'S', 100, 'first'), _rev('w', 'E', 150), _rev('w', 'S', 200, 'second')])
    meta = pd.DataFrame({'parent_asin': ['A', 'B'], 'title': ['Item A', 'Item B'], 'main_category': 'X', 'store': 's', 'price': 1.0,
                         'average_rating': 4.0, 'features': [['f'], []], 'description': [['d'], []], 'categories': [[], []],
                         'details': [{'Brand': 'Z'}, {}]})
    h, q = join_history(queries, reviews, meta)
    assert list(h.columns) == list(HISTORY_COLUMNS)
    assert h[h.qid == 1].item_id.tolist() == ['A', 'B']           # C ties the query review, D is later, T never appears
    assert h[h.qid == 3].item_id.tolist() == ['E']               # the review matching ori_review (t=200) is the cut-off
    assert q.n_history.tolist() == [2, 0, 1] and pd.isna(q.query_timestamp[1])
    assert h.attrs['join'] == {'queries': 3, 'queries_without_query_review': 1, 'reviews_at_or_after_cutoff': 2,
                               'target_item_reviews_left_out': 2, 'history_rows_without_meta': 1, 'history_rows': 3}
    assert h.loc[h.item_id == 'A', 'item_text'].item() == 'Item A f d'
    assert json.loads(h.loc[h.item_id == 'A', 'item_details'].item()) == {'Brand': 'Z'}
    with pytest.raises(ValueError, match='no review of their item'):
        join_history(queries, reviews, meta, on_missing='raise')


def test_history_join_never_leaks_on_synthc4(ci_synth):
    f = synth_files(ci_synth)
    q = read_c4_queries(f['queries'])
    reviews = pd.concat([read_reviews(p) for p in f['reviews']], ignore_index=True)
    h, qh = join_history(q, reviews)
    m = h.merge(qh[['qid', 'item_id', 'query_timestamp']].rename(columns={'item_id': 'target'}), on='qid')
    assert (m.timestamp < m.query_timestamp).all() and (m.item_id != m.target).all()
    assert h.attrs['join']['reviews_at_or_after_cutoff'] > 0 and h.attrs['join']['queries_without_query_review'] == 0
    assert qh.n_history.min() >= 8 and qh.n_history.max() <= 30
    pool_cat = read_item_pool(f['pool']).set_index('item_id').category
    assert (h.item_id.map(pool_cat).groupby(h.qid).nunique() >= 2).mean() > 0.8    # a few categories per user


# ---------------------------------------------------------------- splits, stage, downloads

def test_split_is_a_function_of_seed_and_qid_only():
    qids = np.arange(5000)
    s = dict(zip(qids, split_queries(qids, (0.45, 0.1, 0.45), seed=0)))
    perm = np.random.default_rng(0).permutation(qids)[:1000]
    assert dict(zip(perm, split_queries(perm, (0.45, 0.1, 0.45), seed=0))) == {k: s[k] for k in perm}
    frac = pd.Series(list(s.values())).value_counts(normalize=True)
    assert abs(frac['train'] - 0.45) < 0.03 and abs(frac['val'] - 0.10) < 0.02
    assert (split_queries(qids, seed=1) != np.array(list(s.values()))).mean() > 0.3


def test_prepare_data_on_synthc4_is_cached_and_reloads(tmp_path):
    run = start_run('ci', out=tmp_path / 'run', seed=0)
    b = prepare_data(run, SMALL, progress=False)
    assert b.synthetic and set(b.queries.split) <= set(SPLITS) and len(b.items) == 900
    assert (b.queries.n_history > 0).all() and b.queries.category.notna().all()
    assert b.queries.query_detailed.str.contains('usually go for').all()
    mtime = (run.data / 'queries.parquet').stat().st_mtime_ns
    again = prepare_data(run, SMALL, progress=False)
    assert (run.data / 'queries.parquet').stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again.queries, b.queries)
    pd.testing.assert_frame_equal(load_data(run).histories, b.histories)


def test_prepare_data_on_the_real_formats_with_the_samples(tmp_path):
    cfg = DataConfig(source='c4', c4_queries_path=str(SAMPLES / 'amazon_c4/test.csv'),
                     c4_pool_path=str(SAMPLES / 'amazon_c4/sampled_item_metadata_1M.jsonl'),
                     reviews_dir=str(SAMPLES / 'amazon_reviews_2023/raw/review_categories'),
                     meta_dir=str(SAMPLES / 'amazon_reviews_2023/raw/meta_categories'), split_fractions=(0.5, 0.0, 0.5))
    b = prepare_data(start_run('paper', out=tmp_path / 'run', seed=0), cfg, progress=False)
    assert not b.synthetic and len(b.queries) == 4 and len(b.items) == 6
    assert b.queries.n_history.tolist() == [3, 1, 0, 2]
    assert set(b.histories.category) == {'Pet_Supplies', 'Home_and_Kitchen'}
    assert b.manifest['history_join']['queries_without_query_review'] == 1
    assert b.manifest['missing_metadata']['history_rows_without_meta'] == round(1 / 6, 4)     # under 20%: no error
    assert b.manifest['missing_metadata']['pool_items_without_category'] == 0
    with pytest.raises(DataUnavailableError, match='max_missing_meta = 0.1') as ei:     # a lower threshold: an error
        prepare_data(start_run('paper', out=tmp_path / 'run1', seed=0), dataclasses.replace(cfg, max_missing_meta=0.1),
                     progress=False)
    assert 'meta_Home_and_Kitchen.jsonl' in str(ei.value) or 'meta_Pet_Supplies.jsonl' in str(ei.value)
    missing = DataConfig(source='c4', c4_queries_path=str(tmp_path / 'nope/test.csv'), reviews_dir=str(tmp_path / 'r'), meta_dir=str(tmp_path / 'm'))
    with pytest.raises(DataUnavailableError, match='resolve/main/test.csv') as ei:
        prepare_data(start_run('paper', out=tmp_path / 'run2', seed=0), missing, progress=False)
    assert str(tmp_path / 'nope/test.csv') in str(ei.value) and 'data/README.md' in str(ei.value)
    assert "profile 'paper'" in str(ei.value)
    with pytest.raises(DataUnavailableError) as ei:       # the message names the profile that is running
        prepare_data(start_run('ci', out=tmp_path / 'run3', seed=0), missing, progress=False)
    assert "profile 'ci'" in str(ei.value) and 'paper' not in str(ei.value)


def test_prepare_data_cleans_the_markup_samples_and_says_so(tmp_path):
    cfg = dict(source='c4', c4_queries_path=str(MARKUP / 'test.csv'),
               c4_pool_path=str(MARKUP / 'sampled_item_metadata_1M.jsonl'),
               reviews_dir=str(MARKUP / 'raw/review_categories'), meta_dir=str(MARKUP / 'raw/meta_categories'),
               split_fractions=(0.5, 0.0, 0.5))
    b = prepare_data(start_run('paper', out=tmp_path / 'on', seed=0), DataConfig(**cfg), progress=False)
    off = prepare_data(start_run('paper', out=tmp_path / 'off', seed=0), DataConfig(**cfg, clean_text=False),
                       progress=False)
    assert b.manifest['clean_text'] is True and off.manifest['clean_text'] is False
    assert b.manifest['cleaned_values'][str(MARKUP / 'sampled_item_metadata_1M.jsonl')] == {'metadata': 3}
    assert not b.items.metadata.str.contains('<br', regex=False).any() and off.items.metadata.str.contains('<br').any()
    assert 'metadata_raw' in b.items and 'metadata_raw' not in off.items
    assert not b.histories.review_text.str.contains('<br|&#34;|VIDEOID', regex=True).any()
    # the query's own review is found by its text with and without cleaning (both sides are cleaned alike)
    assert b.manifest['history_join'] == off.manifest['history_join']


def test_queries_whose_target_is_not_in_the_pool_are_logged_dropped_and_counted(tmp_path, caplog):
    pool = [json.loads(l) for l in (SAMPLES / 'amazon_c4/sampled_item_metadata_1M.jsonl').read_text().splitlines()]
    q = read_c4_queries(SAMPLES / 'amazon_c4/test.csv')
    target = q.item_id[1]
    (tmp_path / 'pool.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in pool if r['item_id'] != target))
    cfg = DataConfig(source='c4', c4_queries_path=str(SAMPLES / 'amazon_c4/test.csv'),
                     c4_pool_path=str(tmp_path / 'pool.jsonl'),
                     reviews_dir=str(SAMPLES / 'amazon_reviews_2023/raw/review_categories'),
                     meta_dir=str(SAMPLES / 'amazon_reviews_2023/raw/meta_categories'), split_fractions=(0.5, 0.0, 0.5))
    with caplog.at_level('WARNING', logger='mrrec.data'):
        b = prepare_data(start_run('paper', out=tmp_path / 'run', seed=0), cfg, progress=False)
    dropped = q.qid[q.item_id == target].tolist()
    assert b.manifest['queries_without_pool_item'] == len(dropped) >= 1
    assert b.manifest['queries_without_pool_item_first_qids'] == dropped
    assert not b.queries.qid.isin(dropped).any() and b.queries.category.notna().all()
    assert not b.histories.qid.isin(dropped).any()
    assert 'not in the item pool' in caplog.text and str(dropped[0]) in caplog.text


def test_real_query_rewrite_needs_a_rewriter_and_uses_it(tmp_path):
    cfg = DataConfig(source='c4', c4_queries_path=str(SAMPLES / 'amazon_c4/test.csv'),
                     c4_pool_path=str(SAMPLES / 'amazon_c4/sampled_item_metadata_1M.jsonl'),
                     reviews_dir=str(SAMPLES / 'amazon_reviews_2023/raw/review_categories'),
                     meta_dir=str(SAMPLES / 'amazon_reviews_2023/raw/meta_categories'), split_fractions=(0.5, 0.0, 0.5),
                     rewrite_queries=True)
    with pytest.raises(ConfigError, match="profile 'paper'.*rewrite="):
        prepare_data(start_run('paper', out=tmp_path / 'run', seed=0), cfg, progress=False)
    def rewrite(q):     # what the stage passes: simplify_queries with an LLM; here an echo of the first three words
        return q.assign(query=q['query_detailed'].map(lambda s: ' '.join(s.split()[:3])), simplify_status='ok')
    b = prepare_data(start_run('paper', out=tmp_path / 'run2', seed=0), cfg, progress=False, rewrite=rewrite)
    assert (b.queries['query'].str.split().str.len() <= 3).all() and b.manifest['rewrite_statuses'] == {'ok': 4}
    assert (b.queries['query_detailed'] != b.queries['query']).all()


def test_downloads_offline_say_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    cfg = DataConfig(source='c4', c4_queries_path=str(tmp_path / 'c4/test.csv'), c4_pool_path=str(tmp_path / 'c4/pool.jsonl'),
                     reviews_dir=str(tmp_path / 'rev'), meta_dir=str(tmp_path / 'meta'))
    with pytest.raises(DataUnavailableError) as ei: download_c4(cfg)
    msg = str(ei.value)
    assert 'HF_HUB_OFFLINE' in msg and 'https://huggingface.co/datasets/McAuley-Lab/Amazon-C4/resolve/main/test.csv' in msg
    assert str(tmp_path / 'c4/test.csv') in msg
    with pytest.raises(DataUnavailableError) as ei: download_amazon_reviews(['Toys_and_Games'], cfg)
    assert 'raw/review_categories/Toys_and_Games.jsonl' in str(ei.value) and str(tmp_path / 'rev/Toys_and_Games.jsonl') in str(ei.value)
    (tmp_path / 'c4').mkdir(); (tmp_path / 'c4/test.csv').write_text('qid\n'); (tmp_path / 'c4/pool.jsonl').write_text('')
    assert download_c4(cfg)['queries'] == tmp_path / 'c4/test.csv'     # files in place are never fetched again


def test_profiles_configure_the_data_stage():
    ci, demo, paper = (load_profile(n).section(DataConfig) for n in ('ci', 'demo', 'paper'))
    assert ci.source == demo.source == 'synth' and paper.source == 'c4'
    assert 1500 <= ci.n_items <= 2500 and ci.n_items < demo.n_items <= 25000
    assert 40 <= ci.n_queries * ci.split_fractions[2] <= 60 and 200 <= demo.n_queries * demo.split_fractions[2] <= 300
    with pytest.raises(ConfigError, match='errors'): DataConfig(errors='ignore')
