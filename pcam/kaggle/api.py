"""Talking to Kaggle: credentials, the competition download, and submission.

``download`` fetches the competition zip with the ``kaggle`` client (its
progress bar, its skip of a complete file, its resume of a partial one),
unpacks it safely and atomically, checks what came out and builds the tile
store. ``submit`` uploads a submission CSV. Both turn every failure a user
can fix (no or rejected credentials, rules not accepted, unknown
competition, no network, corrupt zip, full disk) into one ``PcamError`` line
that says what to do.

The ``kaggle`` package is imported inside the functions, and only after
credentials were found: importing it authenticates at once and, without
credentials, prints a page of help (older versions exit).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import shlex
import shutil
import stat
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from pcam.data import competition as comp
from pcam.errors import PcamError
from pcam.settings import DataSettings

TOKEN_PAGE = "https://www.kaggle.com/settings/api"
RULES_PAGE = "https://www.kaggle.com/competitions/{competition}/rules"

# Tile counts checked after extraction, for the competitions whose counts we
# know. A competition not listed here (or an empty mapping) is checked for
# consistency only: CSV ids against tile files.
EXPECTED_COUNTS = {comp.NAME: (comp.N_TRAIN, comp.N_TEST)}

# Free space demanded beyond the zip's uncompressed size: file-system blocks
# round 277k small files up, and a disk filled to the last byte helps no one.
SPACE_MARGIN = 0.05
SPACE_MARGIN_MIN = 256 * 2**20

# The three ways to give the client credentials, said in every message about them.
WAYS = ("create an API token at " + TOKEN_PAGE + " and either export KAGGLE_API_TOKEN=<token>, "
        "or save the token in ~/.kaggle/access_token, or put the legacy kaggle.json in "
        "~/.kaggle/ (chmod 600; or export KAGGLE_USERNAME and KAGGLE_KEY)")


# --- credentials ----------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """Which credentials the client will use, named by where they are.

    Never holds the secret itself, so it can be printed and logged.
    """

    kind: str         # "API token", "API key" or "OAuth login"
    source: str       # an environment variable's name or a file's path
    config_dir: Path  # the folder whose kaggle.json the client reads


def config_dir() -> Path:
    """The folder where the kaggle client looks for kaggle.json.

    The client's own rule: ``KAGGLE_CONFIG_DIR``, else ``~/.kaggle`` when it
    exists, else ``$XDG_CONFIG_HOME/kaggle`` (``~/.config/kaggle``) on Linux.
    """
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser()
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return legacy


def find_credentials() -> Credentials:
    """Find the credentials the kaggle client would use, in its own order.

    An API token (``KAGGLE_API_TOKEN``, holding the token or a file's path;
    ``~/.kaggle/access_token``), then the legacy key (``kaggle.json`` in
    ``config_dir()``, with ``KAGGLE_USERNAME`` / ``KAGGLE_KEY`` taking
    precedence), then an OAuth login (``kaggle auth login``). A kaggle.json
    that other users can read is reported with a warning on stderr.

    Raises:
        PcamError: nothing usable was found (the message lists the ways to
            provide credentials), or kaggle.json is not valid JSON.
    """
    found = _api_token(os.environ) or _api_key(os.environ)
    if found:
        return found
    raise PcamError(f"no Kaggle credentials found: {WAYS}")


def _api_token(env) -> Credentials | None:
    """The notebook's token, ``KAGGLE_API_TOKEN``, or ``~/.kaggle/access_token``."""
    # In a Kaggle notebook, the client uses the token file the notebook provides.
    notebook_token = env.get("KAGGLE_API_V1_TOKEN", "")
    if (env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL") and notebook_token
            and Path(notebook_token).is_file() and Path(notebook_token).read_text().strip()):
        return Credentials("API token", f"{notebook_token} (the notebook's KAGGLE_API_V1_TOKEN)",
                           config_dir())
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        path = Path(token).expanduser()
        if not path.exists():
            return Credentials("API token", "KAGGLE_API_TOKEN", config_dir())
        if path.is_file() and path.read_text().strip():
            return Credentials("API token", f"{path} (named by KAGGLE_API_TOKEN)", config_dir())
        raise PcamError(f"KAGGLE_API_TOKEN names {path}, which holds no token: save the token "
                        f"from {TOKEN_PAGE} in it, or unset KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text().strip():
            return Credentials("API token", str(path), config_dir())
    return None


def _api_key(env) -> Credentials | None:
    """The legacy key (kaggle.json, ``KAGGLE_USERNAME``/``KAGGLE_KEY``), or an OAuth login."""
    folder = config_dir()
    values, sources = _kaggle_json(folder / "kaggle.json")
    overrides = {k: env[f"KAGGLE_{k.upper()}"] for k in ("username", "key")
                 if env.get(f"KAGGLE_{k.upper()}")}
    if overrides:
        values.update(overrides)
        sources.append("/".join(f"KAGGLE_{k.upper()}" for k in overrides))
    if values.get("username") and values.get("key"):
        return Credentials("API key", " + ".join(sources), folder)
    oauth = Path.home() / ".kaggle" / "credentials.json"
    if oauth.is_file():
        return Credentials("OAuth login", str(oauth), folder)
    if sources:
        missing = "key" if values.get("username") else "username"
        raise PcamError(f"{' + '.join(sources)} gives no {missing}: {WAYS}")
    return None


def _kaggle_json(kaggle_json: Path) -> tuple[dict, list[str]]:
    """kaggle.json's values and, when it holds any, its path as their source."""
    if not kaggle_json.is_file():
        return {}, []
    _warn_if_readable(kaggle_json)
    try:
        values = json.loads(kaggle_json.read_text() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PcamError(f"{kaggle_json} is not valid JSON: it should read "
                        '{"username": "...", "key": "..."}') from None
    if not isinstance(values, dict):
        return {}, []
    return values, [str(kaggle_json)] if values.get("username") or values.get("key") else []


def _warn_if_readable(path: Path) -> None:
    """Warn (not fail) when other users of the machine can read the key."""
    if os.name != "nt" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"warning: {path} is readable by other users of this machine; "
              f"run: chmod 600 {path}", file=sys.stderr, flush=True)


def connect(creds: Credentials, competition: str = comp.NAME):
    """An authenticated ``KaggleApi`` of the installed kaggle client.

    The client prints its own help and warnings while it authenticates (at
    import, too); ``find_credentials`` has said what matters in one line, so
    that output is dropped.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    api = KaggleApi()
    # The class reads KAGGLE_CONFIG_DIR once, at import; use the folder found now.
    api.config_dir = str(creds.config_dir)
    api.config = str(creds.config_dir / "kaggle.json")
    with contextlib.redirect_stdout(io.StringIO()), kaggle_errors(competition, creds, "signing in"):
        try:
            api.authenticate()
        except SystemExit:  # the client exits when it finds no working credentials
            raise PcamError(_rejected(creds)) from None
    return api


def _rejected(creds: Credentials) -> str:
    return (f"Kaggle rejected the {creds.kind} from {creds.source} (HTTP 401): create a new "
            f"token at {TOKEN_PAGE} and put it in place of the old one")


# --- errors ---------------------------------------------------------------

@contextlib.contextmanager
def kaggle_errors(competition: str, creds: Credentials, doing: str, partial: Path | None = None):
    """Turn the client's HTTP, network and disk errors into one-line PcamErrors.

    Args:
        doing: what was being done, for the message ("downloading").
        partial: the file being downloaded; a network error then says that
            its bytes are kept and the next run resumes from them.
    """
    import requests
    import urllib3

    try:
        yield
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise PcamError(_http_message(status, competition, creds, doing, err)) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        kept = ""
        if partial is not None and partial.is_file() and partial.stat().st_size:
            kept = (f"; the {partial.stat().st_size:,} bytes received are kept in {partial} "
                    f"and the next run resumes")
        raise PcamError(f"cannot reach Kaggle while {doing} ({_reason(err)}): check the network "
                        f"connection (and HTTPS_PROXY behind a proxy), then run the same command "
                        f"again{kept}") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise PcamError(f"disk full while {doing} ({err.filename or ''}): free some space, "
                            f"then run the same command again") from None
        raise


def _http_message(status, competition, creds, doing, err) -> str:
    if status == 401:
        return _rejected(creds)
    if status == 403:
        return (f"Kaggle refused access to '{competition}' while {doing} (HTTP 403): accept the "
                f"competition's rules in a browser at {RULES_PAGE.format(competition=competition)}, "
                f"signed in as the user of the {creds.kind} from {creds.source} (this cannot be done "
                f"through the API), then run the same command again")
    if status == 404:
        return (f"Kaggle has no competition '{competition}' (HTTP 404 while {doing}): check the name; "
                f"it is the last part of the competition's address, as in "
                f"https://www.kaggle.com/competitions/{comp.NAME}")
    if status == 429:
        return f"Kaggle is limiting requests (HTTP 429 while {doing}): wait a few minutes and run again"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"Kaggle answered HTTP {status} while {doing} ({first}): try again later"


def _reason(err: Exception) -> str:
    """The useful end of a requests error ('Connection refused'), not its 300 characters."""
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(err))
    if found:
        return found[-1].strip()
    return type(err).__name__


# --- download -------------------------------------------------------------

def download(competition: str = comp.NAME, data_dir: str | Path = "data", *, force: bool = False,
             store: DataSettings | None = DataSettings(), keep_zip: bool = False,
             expected_counts: dict[str, tuple[int, int]] = EXPECTED_COUNTS,
             mounted: Path | None = None) -> Path:
    """Download a competition's data into ``data_dir/competition`` and build its tile store.

    Steps: credentials; the client's ``competition_download_files`` into
    ``data_dir/competition.zip`` (resumes a partial file, skips a complete
    one); safe extraction into a temporary folder, checked, then renamed
    into place; the zip is deleted unless ``keep_zip``; the tile store is
    built unless ``store`` is None. With everything already in place it does
    nothing and says so in one line (no credentials or network needed).

    Args:
        force: download and extract again even when the data is in place;
            files the zip does not hold (the tile store, your own) are kept.
        store: settings of the tile store to build (``data_dir`` is set to
            the competition folder); None skips the store.
        expected_counts: (train, test) tile counts by competition name.
        mounted: the competition as a Kaggle notebook mounts it, read-only
            (``pcam.places.kaggle_competition``): used where it is when
            ``data_dir/competition`` does not exist; nothing is downloaded.

    Returns:
        The competition folder.
    """
    data_dir = Path(data_dir)
    dest = data_dir / competition
    zip_path = data_dir / f"{competition}.zip"
    expected = expected_counts.get(competition)
    if mounted is not None and not dest.exists():
        print(f"the competition is mounted at {mounted} (a Kaggle notebook): nothing to "
              "download; training and prediction find it there", flush=True)
        # Kaggle's own copy, whole by construction: the counts check is for
        # downloads and extractions that may have stopped short.
        dest, force, expected = Path(mounted), False, None
    settings = dataclasses.replace(store, data_dir=str(dest)) if store is not None else None

    if dest.exists() and not force:
        train, test = verify(dest, expected, hint="pass --force to download it again and replace it")
        if settings is None or _store_current(settings, (train, test)):
            what = "data" if settings is None else "data and tile store"
            print(f"{dest}: {what} already in place ({len(train.ids):,} train, {len(test.ids):,} "
                  f"test tiles); nothing to do (--force downloads again)", flush=True)
            return dest
        print(f"{dest}: data already in place ({len(train.ids):,} train, {len(test.ids):,} test tiles)",
              flush=True)
    else:
        _download_zip(competition, zip_path, force)
        n_train, n_test = extract(zip_path, dest, expected=expected)
        if not keep_zip:
            zip_path.unlink()
        print(f"{dest}: ready ({n_train:,} train, {n_test:,} test tiles)", flush=True)

    if settings is not None:
        from pcam.data.store import prepare

        prepare(settings)
    return dest


def _download_zip(competition: str, zip_path: Path, force: bool) -> None:
    """The competition's zip, through the kaggle client (which resumes a partial file)."""
    creds = find_credentials()
    api = connect(creds, competition)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with kaggle_errors(competition, creds, f"downloading {zip_path}", partial=zip_path):
        try:
            api.competition_download_files(competition, path=str(zip_path.parent), force=force,
                                           quiet=False)
        except ValueError as err:  # the client's check that the size matches Content-Length
            raise PcamError(f"the download of {zip_path} ended short ({err}): run the same "
                            f"command again to resume it") from None
    if not zip_path.is_file():
        raise PcamError(f"Kaggle sent no zip for '{competition}' (expected {zip_path}); download "
                        f"it by hand from https://www.kaggle.com/competitions/{competition}/data")


def _store_current(settings: DataSettings, splits) -> bool:
    """True when both tile stores exist and were built from these very files.

    Asked here so that a run with nothing to do prints one line.
    """
    from pcam.data.sources import read_source
    from pcam.data.store import is_current

    source = read_source(dataclasses.replace(settings, source="kaggle"))
    return all(is_current(split, source, settings.store_path / split.name) for split in splits)


def verify(folder: Path, expected: tuple[int, int] | None = None, *, hint: str = "",
           shown_as: str | None = None):
    """Check a competition folder (CSVs against tiles, and the tile counts when known).

    Tiles are not decoded here; the store's ingest does that. Problems are
    reported on one line, ``folder`` shown as ``shown_as`` (a temporary
    folder is named after the zip it came from).

    Returns:
        The train and test ``Split``.
    """
    shown = shown_as or str(folder)
    try:
        train, test = comp.read_competition(folder)
    except PcamError as err:
        head, *problems = str(err).splitlines()
        text = " ".join([head, "; ".join(p.strip() for p in problems)]).strip()
        # "TMP has 1 problem(s): TMP/train_labels.csv: missing" -> "ZIP has ...: train_labels.csv: missing"
        if shown_as:
            text = text.replace(f"{folder}{os.sep}", "").replace(str(folder), shown_as)
        raise PcamError(text + (f"; {hint}" if hint else "")) from None
    if expected and (len(train.ids), len(test.ids)) != tuple(expected):
        raise PcamError(f"{shown} has {len(train.ids):,} train and {len(test.ids):,} test tiles, "
                        f"the competition {expected[0]:,} and {expected[1]:,}"
                        + (f"; {hint}" if hint else ""))
    return train, test


def extract(zip_path: Path, dest: Path, *, expected: tuple[int, int] | None = None,
            downloaded: bool = True) -> tuple[int, int]:
    """Unpack a competition zip safely into ``dest``; return (n_train, n_test).

    Members are checked before anything is written: an absolute path, a
    ``..`` part or a link is refused, so nothing can land outside ``dest``.
    Free space is checked against the members' uncompressed sizes. The
    members go into a temporary folder beside ``dest``, which is checked
    (``verify``) and only then renamed to ``dest``: an interrupted or failed
    extraction never leaves a ``dest`` that looks complete. An existing
    ``dest`` (``--force``) is replaced, keeping what the zip does not hold.

    The CRC check that ``ZipFile.testzip`` makes is made as each member is
    extracted (zipfile checks every member's CRC-32 as its last byte is
    read), so the 6 GB zip is read once, not twice. A corrupt zip is deleted,
    so that the next run downloads it anew instead of skipping it as complete
    (but for one that was not ``downloaded``, such as the bundled demo sample).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.extracting")
    if tmp.exists():  # left by an interrupted run
        shutil.rmtree(tmp)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError) as err:
        raise _corrupt(zip_path, err, downloaded) from None
    try:
        with archive:
            members = _safe_members(archive, zip_path)
            _check_space(members, zip_path, dest.parent)
            try:
                _extract_members(archive, members, tmp, zip_path)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise _corrupt(zip_path, err, downloaded) from None
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise PcamError(f"disk full while extracting {zip_path} into {dest.parent}: free "
                                    f"some space (the zip is kept), then run the same command "
                                    f"again") from None
                raise
        train, test = verify(tmp, expected, shown_as=str(zip_path),
                             hint=f"the zip is kept at {zip_path}")
        _swap_into_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(train.ids), len(test.ids)


def _corrupt(zip_path: Path, err: Exception, downloaded: bool = True) -> PcamError:
    """Delete a corrupt downloaded zip (and the client's resume marker) and say so."""
    if not downloaded:
        return PcamError(f"{zip_path} is corrupt ({err}); reinstall pcam to restore it")
    with contextlib.suppress(FileNotFoundError):
        zip_path.unlink()
    with contextlib.suppress(FileNotFoundError):
        Path(f"{zip_path}.kaggle-partial").unlink()
    return PcamError(f"{zip_path} is corrupt ({err}); it was deleted: run the same command "
                     f"again to download it anew")


def _safe_members(archive: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    """The zip's members, after refusing any that could write outside the destination."""
    refused = []
    for info in archive.infolist():
        name = info.filename
        kind = stat.S_IFMT(info.external_attr >> 16)
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if kind == stat.S_IFLNK:
            refused.append(f"'{name}' is a symbolic link")
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: made where there are no Unix modes
            refused.append(f"'{name}' is not a plain file")
        elif name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
            refused.append(f"'{name}' has an absolute path")
        elif ".." in parts:
            refused.append(f"'{name}' climbs out of the folder with '..'")
        elif not parts:
            refused.append(f"'{name}' has no name")
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise PcamError(f"refusing to extract {zip_path}: member {refused[0]}{more}; nothing was "
                        f"extracted. A competition zip holds no such member: delete {zip_path} "
                        f"and download again")
    return archive.infolist()


def _check_space(members, zip_path: Path, where: Path) -> None:
    need = sum(m.file_size for m in members)
    need += max(int(need * SPACE_MARGIN), SPACE_MARGIN_MIN)
    free = shutil.disk_usage(where).free
    if free < need:
        raise PcamError(f"not enough free disk space in {where}: extracting {zip_path} needs "
                        f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free; free some space "
                        f"(the zip is kept), then run the same command again")


def _extract_members(archive: zipfile.ZipFile, members, tmp: Path, zip_path: Path) -> None:
    """Write the (already checked) members under ``tmp``, with a progress bar in bytes."""
    from tqdm.auto import tqdm

    root = os.path.abspath(tmp)
    made = set()
    tmp.mkdir(parents=True)
    with tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True,
              unit_divisor=1024, desc=f"extract {zip_path.name}") as progress:
        for info in members:
            target = tmp.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
            # Belt and braces after _safe_members: the path must stay under tmp (links
            # were refused, so the normalised path is where the bytes go).
            if os.path.commonpath([root, os.path.abspath(target)]) != root:
                raise PcamError(f"refusing to extract {zip_path}: member '{info.filename}' "
                                f"points outside the folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 2**20)
            progress.update(info.file_size)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the extracted folder to ``dest``; an old ``dest`` gives up its extra files.

    The old folder is renamed aside first and deleted last, so an
    interruption loses nothing the user made (it stays in ``.NAME.old``).
    """
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(dest, old)
    os.replace(tmp, dest)
    shipped = {p.name for p in dest.iterdir()}
    for entry in old.iterdir():  # the tile store, the user's own files
        if entry.name not in shipped:
            os.replace(entry, dest / entry.name)
    shutil.rmtree(old)


# --- submit ---------------------------------------------------------------

def submit_command(csv_path: str | Path, message: str, competition: str = comp.NAME) -> str:
    """The ``kaggle`` command that makes the same submission, quoted for a shell."""
    return shlex.join(["kaggle", "competitions", "submit", "-c", competition,
                       "-f", str(csv_path), "-m", message])


def submit(csv_path: str | Path, message: str, competition: str = comp.NAME) -> str:
    """Upload a submission CSV to the competition; return Kaggle's answer.

    Uses the client's ``competition_submit`` (StartSubmissionUpload, the
    upload itself, CreateSubmission). The client does not raise when the
    upload fails: it answers "Could not submit to competition". Any answer
    that is not a recorded submission is a failure here.

    Raises:
        PcamError: the file is missing, the credentials or the rules stand
            in the way, the network is down, or Kaggle did not record it.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise PcamError(f"{csv_path}: no such file; write a submission first "
                        f"(python scripts/predict.py --run runs/NAME)")
    creds = find_credentials()
    api = connect(creds, competition)
    with kaggle_errors(competition, creds, f"submitting {csv_path}"):
        answer = api.competition_submit(str(csv_path), message, competition, quiet=False)
    text = (getattr(answer, "message", "") or "").strip()
    recorded = (text != api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
                and (text.startswith("Successfully") or bool(getattr(answer, "ref", 0))))
    if not recorded:
        raise PcamError(f"Kaggle did not record the submission of {csv_path} "
                        f"({text or 'no answer'}): run again, or submit by hand: "
                        f"{submit_command(csv_path, message, competition)}")
    return text
