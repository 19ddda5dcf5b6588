"""A build lock left on DeepSpeed's CPU collectives op by a killed process is cleared; a live one is kept."""

from __future__ import annotations

import os
import time

from torch.utils.file_baton import FileBaton

from ese_trainer.config.deepspeed_op import STALE_LOCK_SECONDS, clear_stale_build_lock, extension_build_folder


def test_build_folder_is_where_torch_builds_under_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extension_build_folder("deepspeed_shm_comm") == tmp_path / "deepspeed_shm_comm"


def test_a_stale_lock_is_removed_and_torch_can_take_the_baton_again(tmp_path, caplog):
    lock = tmp_path / "lock"
    baton = FileBaton(str(lock))
    assert baton.try_acquire()  # a process takes the lock ... and is killed before releasing it
    os.close(baton.fd)
    old = time.time() - STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert not FileBaton(str(lock)).try_acquire()  # every later load would wait forever
    assert clear_stale_build_lock(tmp_path)
    assert not lock.exists()
    assert str(lock) in caplog.text
    later = FileBaton(str(lock))
    assert later.try_acquire()
    later.release()


def test_a_recent_lock_is_kept_and_no_lock_is_no_op(tmp_path):
    assert not clear_stale_build_lock(tmp_path)
    baton = FileBaton(str(tmp_path / "lock"))
    assert baton.try_acquire()  # a build in progress
    assert not clear_stale_build_lock(tmp_path)
    assert (tmp_path / "lock").exists()
    baton.release()
