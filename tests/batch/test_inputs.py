"""expand_inputs: folders, globs, manifests, file lists; identities and row keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workzone.batch.inputs import expand_inputs, row_key
from workzone.errors import DataError


@pytest.fixture
def tree(tmp_path) -> Path:
    for rel in ("a/1.jpg", "a/b/2.PNG", "a/b/clip.mp4", "a/notes.txt", "a/b/model.onnx", "c/3.jpg"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return tmp_path


def _names(items) -> list[tuple[str, str]]:
    return [(it.path.name, it.kind) for it in items]


def test_folder_is_searched_recursively_for_images_and_videos(tree) -> None:
    assert _names(expand_inputs([tree / "a"])) == [("1.jpg", "image"), ("2.PNG", "image"), ("clip.mp4", "video")]


@pytest.mark.parametrize(("inputs", "pattern", "expected"), [
    (["a"], "b/*", ["2.PNG", "clip.mp4"]),
    (["a"], "*.jpg", ["1.jpg"]),
    (["**/*.jpg"], None, ["1.jpg", "3.jpg"]),
    (["a/*/*.mp4"], None, ["clip.mp4"]),
])
def test_glob_patterns(tree, inputs, pattern, expected) -> None:
    items = expand_inputs([str(tree / i) for i in inputs], glob_pattern=pattern)
    assert [it.path.name for it in items] == expected


def test_a_glob_matching_nothing_is_an_error(tree) -> None:
    with pytest.raises(DataError, match="matches no file"):
        expand_inputs([str(tree / "nothing" / "*.jpg")])


def test_csv_manifest_paths_resolve_against_the_manifest(tree) -> None:
    (tree / "m.csv").write_text("path,label\na/1.jpg,1\nc/3.jpg,0\n" + str(tree / "a/b/clip.mp4") + ",1\n")
    assert _names(expand_inputs([tree / "m.csv"])) == [("1.jpg", "image"), ("3.jpg", "image"), ("clip.mp4", "video")]


def test_parquet_manifest(tree) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["c/3.jpg", "a/1.jpg"], "label": [0, 1]}), tree / "m.parquet")
    assert _names(expand_inputs([tree / "m.parquet"])) == [("3.jpg", "image"), ("1.jpg", "image")]


@pytest.mark.parametrize("name,content", [("m.csv", "file,label\nx.jpg,1\n")])
def test_manifest_without_path_column_is_an_error(tree, name, content) -> None:
    (tree / name).write_text(content)
    with pytest.raises(DataError, match="no 'path' column"):
        expand_inputs([tree / name])


def test_file_list_with_comments_duplicates_and_a_missing_file(tree) -> None:
    (tree / "list.txt").write_text("# day one\na/1.jpg\n\nc/3.jpg\na/1.jpg\nc/gone.jpg\n")
    items = expand_inputs([tree / "list.txt", tree / "c"])
    assert _names(items) == [("1.jpg", "image"), ("3.jpg", "image"), ("gone.jpg", "image")]
    assert len({it.file_id for it in items}) == 3


def test_stat_identity_changes_with_the_file_content_identity_with_its_bytes(tree) -> None:
    f = tree / "c" / "3.jpg"
    stat_id = expand_inputs([f])[0].file_id
    content_id = expand_inputs([f], identity="content")[0].file_id
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    assert expand_inputs([f])[0].file_id != stat_id
    assert expand_inputs([f], identity="content")[0].file_id == content_id
    f.write_bytes(b"changed")
    assert expand_inputs([f], identity="content")[0].file_id != content_id


def test_row_key() -> None:
    assert row_key("ab", None) == "ab:-" and row_key("ab", 0) == "ab:0"
