"""pcam.kaggle.api and scripts/download.py: the real kaggle client against a fake Kaggle.

Every test talks HTTP to ``fake_kaggle.FakeKaggle`` on 127.0.0.1 (or to a
closed port there); none can reach the internet. The competition zip is made
of real PCam tiles by ``make_kaggle_layout.py``, 60 train and 20 test.
"""
from __future__ import annotations

import io
import json
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import REPO, make_layout
from fake_kaggle import KEY, TOKEN, USERNAME, FakeKaggle

from pcam.data import competition
from pcam.errors import PcamError
from pcam.kaggle.api import download, find_credentials, submit, submit_command
from pcam.settings import DataSettings

pytest_plugins = ["fake_kaggle"]  # its fixtures: fake_kaggle, kaggle_home

NAME = "pcam-fake"  # not the real competition, so its tile counts are not demanded
N_TRAIN, N_TEST = 60, 20


@pytest.fixture(scope="session")
def layout_zip(tmp_path_factory):
    """The laid-out folder and its competition zip (bytes), made once."""
    root = tmp_path_factory.mktemp("zip")
    folder = make_layout(root / "comp", train=N_TRAIN, test=N_TEST, seed=3, zip_path=root / "comp.zip")
    return folder, (root / "comp.zip").read_bytes()


def rezip(zip_bytes: bytes, drop=(), add=()) -> bytes:
    """A copy of a zip without the members named in ``drop``, plus ``add`` (ZipInfo, data) pairs."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename not in drop:
                dst.writestr(info, src.read(info))
        for info, data in add:
            dst.writestr(info, data)
    return out.getvalue()


def flip_a_byte(zip_bytes: bytes) -> bytes:
    """Damage the compressed data of the largest member (its CRC no longer matches)."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    header = zip_bytes[info.header_offset:info.header_offset + 30]
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    return zip_bytes[:at] + bytes([zip_bytes[at] ^ 0xFF]) + zip_bytes[at + 1:]


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return (files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
            and all((a / f).read_bytes() == (b / f).read_bytes() for f in files))


def leftovers(data: Path) -> list[str]:
    """Temporary folders of an extraction (none may survive a run)."""
    return sorted(p.name for p in data.glob(".*"))


# --- download ---------------------------------------------------------------

def test_download_end_to_end_then_a_second_run_does_nothing(fake_kaggle, layout_zip, tmp_path,
                                                            capsys, monkeypatch):
    folder, zip_bytes = layout_zip
    fake_kaggle.add_competition(NAME, zip_bytes)
    data = tmp_path / "data"

    dest = download(NAME, data, store=DataSettings(workers=1))

    assert dest == data / NAME
    assert same_tree(folder / "train", dest / "train") and same_tree(folder / "test", dest / "test")
    for csv in (competition.TRAIN_CSV, competition.TEST_CSV):
        assert (dest / csv).read_bytes() == (folder / csv).read_bytes()
    assert not (data / f"{NAME}.zip").exists() and leftovers(data) == []
    from pcam.data.store import open_store
    store = DataSettings(data_dir=str(dest)).store_path
    assert open_store(store / "train").n_tiles == N_TRAIN
    assert open_store(store / "test").n_tiles == N_TEST
    api, get = fake_kaggle.seen("POST"), fake_kaggle.seen("GET")
    assert [r.path for r in api] == ["/v1/competitions.CompetitionApiService/DownloadDataFiles"]
    assert api[0].body == {"competitionName": NAME} and api[0].status == 302
    assert fake_kaggle.user_of(api[0].headers) == USERNAME
    assert [(r.status, r.headers.get("Range")) for r in get] == [(200, None)]
    out = capsys.readouterr().out
    assert f"Downloading {NAME}.zip" in out and f"ready ({N_TRAIN} train, {N_TEST} test tiles)" in out

    # Everything in place: no credentials needed, no request made, one line said.
    monkeypatch.delenv("KAGGLE_KEY")
    before = len(fake_kaggle.requests)
    download(NAME, data, store=DataSettings(workers=1))
    out, err = capsys.readouterr()
    assert len(fake_kaggle.requests) == before
    assert out.count("\n") == 1 and "nothing to do" in out and "tile store" in out and err == ""


def test_dropped_connection_is_resumed_with_a_range_request(fake_kaggle, layout_zip, tmp_path, capsys):
    folder, zip_bytes = layout_zip
    fake_kaggle.add_competition(NAME, zip_bytes)
    drop = fake_kaggle.drop_once_at = len(zip_bytes) * 2 // 3
    assert drop > 2**20  # past the client's first 1 MiB write, so there is something to resume from

    dest = download(NAME, tmp_path / "data", store=None)

    first, second = fake_kaggle.seen("GET")
    assert first.note.startswith("dropped")
    start = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= drop  # what the client had written when the connection dropped
    assert second.status == 206 and second.headers["If-Range"] == fake_kaggle.competitions[NAME].etag
    assert "Resuming from" in capsys.readouterr().out
    assert same_tree(folder / "train", dest / "train")


@pytest.mark.parametrize("case", ["401", "403", "404"])
def test_kaggle_refusals_are_one_line_with_what_to_do(case, fake_kaggle, layout_zip, tmp_path, monkeypatch):
    fake_kaggle.add_competition(NAME, layout_zip[1], rules_accepted=case != "403")
    if case == "401":
        monkeypatch.setenv("KAGGLE_KEY", "not-" + KEY)
    name = "no-such-competition" if case == "404" else NAME

    with pytest.raises(PcamError) as err:
        download(name, tmp_path / "data", store=None)

    text = str(err.value)
    assert "\n" not in text and f"HTTP {case}" in text and KEY not in text
    if case == "401":
        assert "rejected" in text and "KAGGLE_USERNAME/KAGGLE_KEY" in text and "settings/api" in text
    if case == "403":
        assert f"https://www.kaggle.com/competitions/{NAME}/rules" in text
        assert "cannot be done through the API" in text
    if case == "404":
        assert "no competition 'no-such-competition'" in text
    assert not (tmp_path / "data" / name).exists()


@pytest.mark.parametrize("good", [True, False], ids=["valid-token", "revoked-token"])
def test_api_token_is_introspected_then_sent_as_bearer(good, fake_kaggle, layout_zip, tmp_path, monkeypatch):
    fake_kaggle.add_competition(NAME, layout_zip[1])
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN if good else "KGAT_revoked")

    if good:
        download(NAME, tmp_path / "data", store=None)
        call = fake_kaggle.seen("POST", "/DownloadDataFiles")[0]
        assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    else:
        with pytest.raises(PcamError, match="rejected the API token from KAGGLE_API_TOKEN"):
            download(NAME, tmp_path / "data", store=None)
    assert fake_kaggle.seen("POST", "/security.OAuthService/IntrospectToken")


def test_unreachable_server_is_a_network_error(fake_kaggle, monkeypatch, tmp_path):
    from kagglesdk import kaggle_env

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for env in kaggle_env.KaggleEnv:
        monkeypatch.setitem(kaggle_env._env_to_endpoint, env, closed)

    with pytest.raises(PcamError, match=r"cannot reach Kaggle .*\(Connection refused\): check the network"):
        download(NAME, tmp_path / "data", store=None)


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated"])
def test_corrupt_zip_is_deleted_and_nothing_extracted(damage, fake_kaggle, layout_zip, tmp_path):
    zip_bytes = layout_zip[1]
    bad = flip_a_byte(zip_bytes) if damage == "flipped-byte" else zip_bytes[:len(zip_bytes) // 2]
    fake_kaggle.add_competition(NAME, bad)
    data = tmp_path / "data"

    with pytest.raises(PcamError, match=r"pcam-fake.zip is corrupt .*deleted: run the same command again"):
        download(NAME, data, store=None)

    assert sorted(p.name for p in data.iterdir()) == []  # no zip, no folder, no temporary folder


UNSAFE = {
    "dot-dot": (zipfile.ZipInfo("../evil.txt"), b"owned", "climbs out"),
    "absolute": (zipfile.ZipInfo("/tmp/evil.txt"), b"owned", "absolute path"),
    "symlink": (zipfile.ZipInfo("train/evil.tif"), b"../../evil.txt", "symbolic link"),
}
UNSAFE["symlink"][0].external_attr = (stat.S_IFLNK | 0o777) << 16


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_unsafe_zip_member_is_refused_and_nothing_written(kind, fake_kaggle, layout_zip, tmp_path):
    info, data, why = UNSAFE[kind]
    fake_kaggle.add_competition(NAME, rezip(layout_zip[1], add=[(info, data)]))
    folder = tmp_path / "data"

    with pytest.raises(PcamError, match=f"refusing to extract .*{why}.*nothing was extracted"):
        download(NAME, folder, store=None)

    assert sorted(p.name for p in folder.iterdir()) == [f"{NAME}.zip"]  # kept for inspection
    assert not list(tmp_path.rglob("evil*"))


def test_zip_without_train_labels_is_named_and_nothing_left(fake_kaggle, layout_zip, tmp_path):
    fake_kaggle.add_competition(NAME, rezip(layout_zip[1], drop=[competition.TRAIN_CSV]))
    data = tmp_path / "data"

    with pytest.raises(PcamError) as err:
        download(NAME, data, store=None)

    assert "\n" not in str(err.value)
    assert f"{NAME}.zip has 1 problem(s): train_labels.csv: missing" in str(err.value)
    assert sorted(p.name for p in data.iterdir()) == [f"{NAME}.zip"]


def test_tile_counts_are_checked_where_known(fake_kaggle, layout_zip, tmp_path):
    fake_kaggle.add_competition(NAME, layout_zip[1])
    known = {NAME: (competition.N_TRAIN, competition.N_TEST)}

    with pytest.raises(PcamError, match=f"has {N_TRAIN} train and {N_TEST} test tiles, "
                                        "the competition 220,025 and 57,458"):
        download(NAME, tmp_path / "data", store=None, expected_counts=known)
    assert not (tmp_path / "data" / NAME).exists()


def test_not_enough_disk_space_stops_before_extracting(fake_kaggle, layout_zip, tmp_path, monkeypatch):
    fake_kaggle.add_competition(NAME, layout_zip[1])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))

    with pytest.raises(PcamError, match=r"not enough free disk space .*free some space \(the zip is kept\)"):
        download(NAME, tmp_path / "data", store=None)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [f"{NAME}.zip"]


def test_leftovers_of_an_interrupted_run_and_force(fake_kaggle, layout_zip, tmp_path):
    folder, zip_bytes = layout_zip
    fake_kaggle.add_competition(NAME, zip_bytes)
    data = tmp_path / "data"
    stale = data / f".{NAME}.extracting" / "train"  # what a killed extraction leaves
    stale.mkdir(parents=True)
    (stale / "half.tif").write_bytes(b"II*\0")

    dest = download(NAME, data, store=None, keep_zip=True)
    assert leftovers(data) == [] and (data / f"{NAME}.zip").is_file()

    # --force downloads and extracts again; files the zip does not hold are kept.
    (dest / "store").mkdir()
    (dest / "store" / "manifest.json").write_text("{}")
    (dest / "train" / "extra.tif").write_bytes(b"not shipped")
    download(NAME, data, store=None, force=True)
    assert len(fake_kaggle.seen("GET")) == 2
    assert (dest / "store" / "manifest.json").read_text() == "{}"
    assert same_tree(folder / "train", dest / "train")  # the old train/ was replaced whole
    assert leftovers(data) == [] and not (data / f"{NAME}.zip").exists()


def test_interrupted_extraction_never_looks_complete(fake_kaggle, layout_zip, tmp_path, monkeypatch, capsys):
    folder, zip_bytes = layout_zip
    fake_kaggle.add_competition(NAME, zip_bytes)
    data, dest = tmp_path / "data", tmp_path / "data" / NAME
    copy, copied = shutil.copyfileobj, []

    def copy_then_interrupt(src, dst, length=0):
        assert not dest.exists()  # the destination appears only when everything is in
        copied.append(dst.name)
        if len(copied) == N_TRAIN // 2:
            raise KeyboardInterrupt  # Ctrl-C halfway through train/
        copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        download(NAME, data, store=None)
    assert not dest.exists() and leftovers(data) == [] and (data / f"{NAME}.zip").is_file()

    # The next run keeps the complete zip (the client skips it) and extracts it.
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    capsys.readouterr()
    download(NAME, data, store=None)
    assert "Skipping" in capsys.readouterr().out
    assert same_tree(folder / "train", dest / "train")


def test_incomplete_folder_in_place_is_reported_not_replaced(kaggle_home, layout_zip, tmp_path):
    dest = tmp_path / "data" / NAME
    shutil.copytree(layout_zip[0], dest)
    (dest / competition.TEST_CSV).unlink()

    with pytest.raises(PcamError, match="sample_submission.csv: missing; pass --force to download it again"):
        download(NAME, tmp_path / "data", store=None)


# --- credentials ------------------------------------------------------------

def test_no_credentials_says_the_three_ways(kaggle_home):
    with pytest.raises(PcamError) as err:
        find_credentials()
    text = str(err.value)
    assert text.startswith("no Kaggle credentials found") and "\n" not in text
    for way in ("KAGGLE_API_TOKEN", "~/.kaggle/access_token", "kaggle.json", "settings/api"):
        assert way in text


@pytest.mark.parametrize("where", ["~/.kaggle", "~/.config/kaggle", "KAGGLE_CONFIG_DIR", "access_token",
                                   "env"])
def test_credentials_are_found_where_the_client_looks(where, kaggle_home, monkeypatch):
    key_json = json.dumps({"username": USERNAME, "key": KEY})
    if where == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        expected = "KAGGLE_USERNAME/KAGGLE_KEY"
    elif where == "access_token":
        (kaggle_home / ".kaggle").mkdir()
        (kaggle_home / ".kaggle" / "access_token").write_text(TOKEN + "\n")
        expected = str(kaggle_home / ".kaggle" / "access_token")
    else:
        folder = (kaggle_home / "cfg" if where == "KAGGLE_CONFIG_DIR"
                  else Path(where.replace("~", str(kaggle_home))))
        if where == "KAGGLE_CONFIG_DIR":
            monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
        folder.mkdir(parents=True)
        (folder / "kaggle.json").write_text(key_json)
        (folder / "kaggle.json").chmod(0o600)
        expected = str(folder / "kaggle.json")
    assert find_credentials().source == expected


def test_kaggle_json_readable_by_others_is_warned_and_key_never_shown(kaggle_home, capsys):
    (kaggle_home / ".kaggle").mkdir()
    path = kaggle_home / ".kaggle" / "kaggle.json"
    path.write_text(json.dumps({"username": USERNAME, "key": KEY}))
    path.chmod(0o644)

    creds = find_credentials()

    err = capsys.readouterr().err
    assert f"warning: {path} is readable by other users" in err and f"chmod 600 {path}" in err
    assert KEY not in err and KEY not in repr(creds)


# --- submit -----------------------------------------------------------------

@pytest.fixture
def submission(tmp_path):
    path = tmp_path / "submissions" / "run 1.csv"
    path.parent.mkdir()
    path.write_text("id,label\n" + "".join(f"{i:040x},0.{i}\n" for i in range(1, 6)))
    return path


def test_submit_uploads_then_creates_the_submission(fake_kaggle, layout_zip, submission):
    fake_kaggle.add_competition(NAME, layout_zip[1])

    answer = submit(submission, "fold ensemble x8 TTA", competition=NAME)

    assert answer == "Successfully submitted to Fake Competition"
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_kaggle.requests] == [
        ("POST", "StartSubmissionUpload"), ("PUT", "blob-1"), ("POST", "CreateSubmission")]
    start = fake_kaggle.requests[0].body
    assert start["fileName"] == "run 1.csv" and start["contentLength"] == submission.stat().st_size
    [made] = fake_kaggle.submissions
    assert made["bytes"] == submission.read_bytes() and made["description"] == "fold ensemble x8 TTA"


def test_failed_upload_is_a_failure_not_a_success(fake_kaggle, layout_zip, submission):
    fake_kaggle.add_competition(NAME, layout_zip[1])
    fake_kaggle.upload_status = 500  # the client answers "Could not submit to competition", no raise

    with pytest.raises(PcamError) as err:
        submit(submission, "m", competition=NAME)

    assert "did not record the submission" in str(err.value) and "Could not submit" in str(err.value)
    assert submit_command(submission, "m", NAME) in str(err.value)
    assert not fake_kaggle.seen("POST", "/CreateSubmission") and fake_kaggle.submissions == []


def test_submit_refusals(fake_kaggle, layout_zip, submission, tmp_path):
    fake_kaggle.add_competition(NAME, layout_zip[1], rules_accepted=False)
    with pytest.raises(PcamError, match=f"HTTP 403.*competitions/{NAME}/rules"):
        submit(submission, "m", competition=NAME)
    with pytest.raises(PcamError, match="no such file"):
        submit(tmp_path / "missing.csv", "m", competition=NAME)


def test_submit_command_is_quoted_for_a_shell():
    command = submit_command(Path("submissions/run 1.csv"), "it's v2", "pcam-fake")
    assert shlex.split(command) == ["kaggle", "competitions", "submit", "-c", "pcam-fake",
                                    "-f", "submissions/run 1.csv", "-m", "it's v2"]


# --- the script -------------------------------------------------------------

def run_script(fake: FakeKaggle, home: Path, *args, credentials=True):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "download.py"), *args],
                          env=fake.subprocess_env(home, credentials), cwd=home,
                          capture_output=True, text=True, timeout=120)


def test_script_downloads_through_localhost_and_proxy(layout_zip, kaggle_home):
    with FakeKaggle() as fake:
        fake.add_competition(NAME, layout_zip[1])
        done = run_script(fake, kaggle_home, "--competition", NAME, "--data-dir", "d", "--no-prepare")
    assert done.returncode == 0, done.stderr
    assert same_tree(layout_zip[0] / "test", kaggle_home / "d" / NAME / "test")
    # KAGGLE_API_ENVIRONMENT=LOCALHOST: http://localhost/api/v1/..., sent to the fake as a proxy.
    assert fake.requests[0].path == "/api/v1/competitions.CompetitionApiService/DownloadDataFiles"
    assert fake.requests[0].headers["Host"] == "localhost"


def test_script_stopped_mid_download_resumes_on_the_next_run(layout_zip, kaggle_home):
    zip_bytes = layout_zip[1]
    command = [sys.executable, str(REPO / "scripts" / "download.py"), "--competition", NAME, "--no-prepare"]
    partial = kaggle_home / "data" / f"{NAME}.zip"
    with FakeKaggle() as fake:
        fake.add_competition(NAME, zip_bytes)
        fake.hang_once_at = len(zip_bytes) * 2 // 3  # the client writes its first 1 MiB, then waits
        # SIGINT restored in the child: a test run started in the background
        # (a job of a non-interactive shell) inherits it ignored, and Ctrl-C
        # would then never reach the download.
        first = subprocess.Popen(command, env=fake.subprocess_env(kaggle_home), cwd=kaggle_home,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not (partial.is_file() and partial.stat().st_size >= 2**20):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130 and "run the same command again to resume" in err
        assert "Traceback" not in err and not (kaggle_home / "data" / NAME).exists()
        kept = partial.stat().st_size

        second = run_script(fake, kaggle_home, "--competition", NAME, "--no-prepare")

    assert second.returncode == 0, second.stderr
    resumed = fake.seen("GET")[-1]
    assert resumed.headers["Range"] == f"bytes={kept}-" and resumed.status == 206
    assert same_tree(layout_zip[0] / "train", kaggle_home / "data" / NAME / "train")


@pytest.mark.parametrize("case", ["no-credentials", "rules-not-accepted"])
def test_script_user_error_is_one_line_without_traceback(case, layout_zip, kaggle_home):
    with FakeKaggle() as fake:
        fake.add_competition(NAME, layout_zip[1], rules_accepted=False)
        done = run_script(fake, kaggle_home, "--competition", NAME, "--no-prepare",
                          credentials=case == "rules-not-accepted")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ")
    if case == "no-credentials":
        assert "no Kaggle credentials found" in done.stderr and fake.requests == []
        assert "Authentication required" not in done.stdout  # the client's help page stayed unprinted
    else:
        assert f"https://www.kaggle.com/competitions/{NAME}/rules" in done.stderr
    assert not (kaggle_home / "data" / NAME).exists()
