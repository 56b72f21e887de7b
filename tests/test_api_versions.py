"""The version slots the API workers share: no worker answers with an older state file than another one serves."""

from __future__ import annotations

import os

import pytest
from funding_api_versions import ServedVersions, token_of, versions_file_size
from funding_api_view import StateViews
from funding_state import StateReader, file_stat_key
from test_api_support import fresh_symbols, write_state


@pytest.fixture
def versions_file(tmp_path):
    path = tmp_path / "versions"
    path.write_bytes(bytes(versions_file_size(2)))
    return str(path)


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, fresh_symbols())
    return path


@pytest.fixture
def workers(state_file, versions_file):
    """The views of two workers sharing the version slots, both built from the same state file."""
    return [
        StateViews(StateReader(str(state_file)), versions=ServedVersions(versions_file, slot=slot))
        for slot in (0, 1)
    ]


def test_a_worker_behind_another_catches_up_before_answering(state_file, workers):
    first, second = workers
    old = second.current()[0]
    write_state(state_file, fresh_symbols(count=5))
    assert first.refresh() is True  # the first worker's refresher took the new file and may serve it now
    view, snapshot = second.current()  # the second worker's refresher has not run
    assert view is not old and view.count == 8 and snapshot.stat_key == file_stat_key(os.stat(state_file))


def test_workers_that_all_serve_one_version_answer_without_looking_at_the_file(state_file, workers):
    first, second = workers
    served = first.current()[0]
    write_state(state_file, fresh_symbols(count=5))
    # No worker serves the new file yet, so answering with the old one goes back on nothing anyone was told.
    assert first.current()[0] is served and second.current()[0].count == 3
    assert first.refresh() is True and second.current()[0].count == 8


def test_a_worker_that_has_not_announced_a_version_sends_the_others_to_the_file(state_file, versions_file):
    first = StateViews(StateReader(str(state_file)), versions=ServedVersions(versions_file, slot=0))
    write_state(state_file, fresh_symbols(count=5))
    # Slot 1 is still empty (its worker is starting or being replaced): the first worker cannot rely on agreement.
    assert first.current()[0].count == 8


def test_every_write_of_the_state_file_has_a_stat_of_its_own(tmp_path):
    # A freed inode number is soon reused and file times advance once per clock tick: without the writer's own
    # nanosecond mtime, back-to-back writes of the same size could share a stat, and a reader would miss one.
    state_file = tmp_path / "state.json"
    keys = []
    for _ in range(50):
        write_state(state_file, fresh_symbols(now=1000.0), now=1000.0)  # the same bytes every time
        keys.append(file_stat_key(os.stat(state_file)))
    assert len({key[2] for key in keys}) == 1 and len({key[1] for key in keys}) < 50  # same size, inodes reused
    assert len(set(keys)) == 50
    assert [key[3] for key in keys] == sorted(key[3] for key in keys)


def test_equal_stat_keys_give_equal_tokens_and_a_missing_file_the_empty_slot(tmp_path):
    key = (1, 2, 3, 4)
    assert token_of(key) == token_of((1, 2, 3, 4)) != token_of((1, 2, 3, 5))
    assert token_of(None) == bytes(8) and token_of(key) != bytes(8)


def test_a_slot_beyond_the_file_is_refused(versions_file):
    with pytest.raises(ValueError, match="beyond"):
        ServedVersions(versions_file, slot=2)
    assert os.path.getsize(versions_file) == 16
