"""Build medimg's server image without a Docker daemon, run it, and check it answers as the host does.

    python .ci/docker_check.py base      # make docker-base: only the local base image (built if missing)
    python .ci/docker_check.py           # make docker-check: everything below
    python .ci/docker_check.py --help    # the options (storage root, wheel folder, port, rebuilding the base)

No registry image is pulled. The steps:

1. The base: ``mmdebstrap`` builds a Debian bookworm root (variant minbase, with python3 3.11, python3-venv and
   ca-certificates: what the Dockerfile needs of python:3.11-slim-bookworm) as a tarball, which
   ``buildah from scratch`` + ``buildah add`` + ``buildah commit`` make the image ``localhost/medimg-base:bookworm``.
   Skipped when that image exists (``--rebuild-base`` forces it).
2. The image: ``buildah bud --isolation chroot --storage-driver overlay --format docker --layers`` of the
   repository's Dockerfile with ``BASE_IMAGE`` set to that base. When the wheel folder (``--wheels``, default
   build/docker/wheels) exists, it is mounted read-only at /wheels and the build installs from it only
   (``WHEELS=/wheels``); without one the build installs from PyPI and the PyTorch CPU index.
   ``--format docker`` keeps the HEALTHCHECK (the OCI format has no field for it).
3. A tiny checkpoint, trained on the host (``python -m medimg.train experiment=synthetic`` at 32 px, 160
   images, one epoch: under a minute on 2 cores) under build/docker/check/run, or reused when it is there.
4. The container: ``podman run`` with the checkpoint folder mounted read-only at /models and the port
   published; where podman cannot run containers, ``buildah run --isolation chroot`` of a working container
   from the image (host network, the image's entry point and environment, the server in the background).
5. The checks: /health answers; POST /predict of one image gives the same class and probabilities (to 1e-4) as
   ``python -m medimg.predict`` on the host; the server process runs as uid 10001; the image's config has the
   HEALTHCHECK. Then the image size and the build times are printed, the container is stopped and removed,
   and the figures are written to build/docker/check/result.json.

Any failure ends the script with status 1 and one line, ``docker-check: <what went wrong>``.
Storage lives under build/containers/<driver> (``--root``), so nothing outside the repository's build/ is
touched. The default driver is overlay: with vfs every build step's working container is a full copy of the
root (about 7 GB here), which with the layer cache on filled 60 GB of disk before the build's end; with
``--storage-driver vfs`` the script therefore builds without the layer cache (one layer on the base).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
BASE_IMAGE = "localhost/medimg-base:bookworm"
IMAGE = "localhost/medimg-serve:check"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]
# no documentation, manual pages or translations in the base, as in the official slim images
DPKG_EXCLUDES = ["path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                 "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias"]
TRAIN = ["experiment=synthetic", "backbone.weights=null", "dataset.num_images=160", "dataset.img_size=32",
         "dataset.num_workers=0", "dataset.batch_size=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "logger=csv"]
TOLERANCE = 1e-4
UID = 10001


class CheckError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[docker-check] {msg}", flush=True)


def run(cmd: list[str], capture: bool = False, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if not capture:
        log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] if capture else []
        rest = cmd[1:]
        if "--storage-driver" in rest:  # Storage's options: name the subcommand that follows them
            rest = rest[rest.index("--storage-driver") + 2:]
        raise CheckError(f"{' '.join([Path(cmd[0]).name, *rest[:1]])} failed with status {proc.returncode}"
                         + (f": {tail[0]}" if tail else " (its output is above)"))
    return proc


class Storage:
    """buildah/podman with the same storage root, run root and driver."""

    def __init__(self, root: Path, driver: str):
        # one storage root per driver: containers/storage refuses a root that another driver made
        self.root, self.runroot, self.driver = root / driver / "storage", root / driver / "run", driver
        self.root.mkdir(parents=True, exist_ok=True)
        self.runroot.mkdir(parents=True, exist_ok=True)

    def buildah(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", self.driver,
                *args]

    def podman(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", self.driver,
                *args]

    def image_exists(self, name: str) -> bool:
        return run(self.buildah("inspect", "--type", "image", name), capture=True, check=False).returncode == 0

    def image_info(self, name: str) -> dict:
        return json.loads(run(self.buildah("inspect", "--type", "image", name), capture=True).stdout)

    def image_size(self, name: str) -> int:
        out = run(self.podman("image", "inspect", "--format", "{{.Size}}", name), capture=True, check=False)
        if out.returncode == 0 and out.stdout.strip().isdigit():
            return int(out.stdout.strip())
        # buildah alone: the layers' uncompressed sizes
        out = run(self.buildah("images", "--json", name), capture=True).stdout
        return int(json.loads(out)[0].get("size", 0))


# 1. the base image ------------------------------------------------------------------------------------------


def build_base(st: Storage, rebuild: bool) -> float | None:
    """Build the base image if it is missing (or ``rebuild``); its build time in seconds, None when kept."""
    if st.image_exists(BASE_IMAGE) and not rebuild:
        log(f"base image {BASE_IMAGE} exists (--rebuild-base builds it again)")
        return None
    for tool in ("mmdebstrap", "buildah"):
        if shutil.which(tool) is None:
            raise CheckError(f"{tool} is not installed (Debian: apt-get install {tool})")
    t0 = time.monotonic()
    work = BUILD / "docker" / "base"
    work.mkdir(parents=True, exist_ok=True)
    tarball = work / "rootfs.tar"
    tarball.unlink(missing_ok=True)
    run(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
         *[f"--dpkgopt={o}" for o in DPKG_EXCLUDES], "bookworm", str(tarball),
         f"deb {MIRROR} bookworm main", f"deb {MIRROR} bookworm-updates main",
         f"deb {MIRROR}-security bookworm-security main"])
    ctr = run(st.buildah("from", "--name", f"medimg-base-{uuid.uuid4().hex[:8]}", "scratch"),
              capture=True).stdout.strip()
    try:
        run(st.buildah("add", ctr, str(tarball), "/"))  # a local tarball is extracted
        run(st.buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "--env", "LANG=C.UTF-8", "--cmd", "python3", "--label",
                       "org.opencontainers.image.description=Debian bookworm (mmdebstrap minbase) with python3",
                       ctr))
        run(st.buildah("commit", "--format", "docker", "--rm", ctr, BASE_IMAGE))
    except BaseException:
        run(st.buildah("rm", ctr), capture=True, check=False)
        raise
    tarball.unlink(missing_ok=True)
    elapsed = time.monotonic() - t0
    log(f"base image {BASE_IMAGE} built in {elapsed:.0f} s")
    return elapsed


# 2. the image -----------------------------------------------------------------------------------------------


def build_image(st: Storage, wheels: Path | None, no_cache: bool) -> float:
    # overlay: every step's layer is kept, so a rebuild after a change to medimg's code reuses the torch layer.
    # vfs copies the whole root for each step's working container (about 7 GB each here), so there the steps
    # go into one layer on the base (no cache) and the build needs about twice the image's size of free disk.
    layers = ["--layers", *(["--no-cache"] * no_cache)] if st.driver != "vfs" else ["--layers=false"]
    cmd = st.buildah("bud", "--isolation", "chroot", "--format", "docker", *layers,
                     "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--tag", IMAGE, "--file", str(ROOT / "Dockerfile"))
    if wheels is not None:
        cmd += ["--volume", f"{wheels}:/wheels:ro", "--build-arg", "WHEELS=/wheels"]
    t0 = time.monotonic()
    run([*cmd, str(ROOT)])
    elapsed = time.monotonic() - t0
    log(f"image {IMAGE} built in {elapsed:.0f} s")
    return elapsed


# 3. the checkpoint and the host's prediction ----------------------------------------------------------------


def checkpoint(work: Path) -> Path:
    run_dir = work / "run"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if ckpt.is_file():
        log(f"reusing the checkpoint {ckpt}")
        return ckpt
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "MEDIMG_ROOT": str(work), "MPLBACKEND": "Agg"}
    t0 = time.monotonic()
    run([sys.executable, "-m", "medimg.train", *TRAIN, f"hydra.run.dir={run_dir}"], env=env, cwd=work)
    if not ckpt.is_file():
        raise CheckError(f"training wrote no {ckpt}")
    log(f"trained the checkpoint in {time.monotonic() - t0:.0f} s")
    return ckpt


def sample_image(work: Path) -> Path:
    images = sorted((work / "data").glob("synthetic/*/images/*/*.png"))
    if not images:
        raise CheckError(f"no synthetic images under {work / 'data'}")
    return images[0]


def host_prediction(work: Path, ckpt: Path, image: Path) -> dict:
    out = work / "predict"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "MEDIMG_ROOT": str(work), "MPLBACKEND": "Agg"}
    run([sys.executable, "-m", "medimg.predict", f"ckpt_path={ckpt}", f"input={image}", "device=cpu",
         f"output_dir={out}", f"hydra.run.dir={out}"], env=env, cwd=work)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise CheckError(f"medimg.predict wrote {len(rows)} rows for one image")
    row = rows[0]
    probs = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_") and not k.startswith("p_uncalibrated_")}
    return {"prediction": row["prediction"], "probabilities": probs}


# 4. the container -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Podman:
    """``podman run`` of the image as it is (its entry point, user and HEALTHCHECK), the port published on
    loopback. Limits podman would raise (open files to 1048576, processes to the host's maximum) are set to what
    this process has, as a sandbox may refuse to raise them; where crun refuses the host's cgroup setup
    ("cgroups in hybrid mode"), runc is tried."""

    name = "podman run"

    def __init__(self, st: Storage, models: Path, port: int):
        self.st, self.models, self.port = st, models, port
        self.ctr = f"medimg-check-{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
        opts = ["--detach", "--name", self.ctr, "--publish", f"127.0.0.1:{self.port}:8000",
                "--volume", f"{self.models}:/models:ro", "--ulimit", f"nofile={nofile}:{nofile}",
                "--ulimit", f"nproc={nproc}:{nproc}"]
        runtimes = [[]] + ([["--runtime", "runc"]] if shutil.which("runc") else [])
        for i, runtime in enumerate(runtimes):
            try:
                run(self.st.podman("run", *runtime, *opts, IMAGE), capture=True)
                if runtime:
                    self.name = "podman run --runtime runc"
                return
            except CheckError as e:
                self.stop()
                if i == len(runtimes) - 1 or "cgroups in hybrid mode" not in str(e):
                    raise
                log(f"podman run: {e}; trying runc")

    def alive(self) -> bool:
        out = run(self.st.podman("inspect", "--format", "{{.State.Running}}", self.ctr), capture=True, check=False)
        return out.stdout.strip() == "true"

    def healthcheck(self) -> str:
        """The image's HEALTHCHECK command, run in the container by podman."""
        out = run(self.st.podman("healthcheck", "run", self.ctr), capture=True, check=False)
        if out.returncode != 0:
            raise CheckError(f"the image's HEALTHCHECK failed in the running container: "
                             f"{last_line(out.stdout + out.stderr)}")
        return "passed (podman healthcheck run)"

    def logs(self) -> str:
        return run(self.st.podman("logs", self.ctr), capture=True, check=False).stdout

    def stop(self) -> None:
        run(self.st.podman("rm", "--force", "--time", "5", self.ctr), capture=True, check=False)


class BuildahRun:
    """The image's entry point in a working container, through ``buildah run --isolation chroot``: no network
    namespace, so the server listens on the host's loopback at ``port`` (``port=`` appended to the entry point)."""

    name = "buildah run --isolation chroot"

    def __init__(self, st: Storage, models: Path, port: int, work: Path):
        self.st, self.models, self.port = st, models, port
        self.ctr = f"medimg-check-{uuid.uuid4().hex[:8]}"
        self.log_path = work / "container.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.st.image_info(IMAGE)["Docker"]["config"]
        run(self.st.buildah("from", "--name", self.ctr, IMAGE), capture=True)
        # buildah run mounts an empty volume at each of the image's VOLUMEs, over a --volume at the same path:
        # drop /models from this working container's config (the image keeps it)
        run(self.st.buildah("config", "--volume", "/models-", self.ctr), capture=True)
        cmd = self.st.buildah("run", "--isolation", "chroot", "--volume", f"{self.models}:/models:ro",
                              "--user", str(config.get("User") or UID), "--workingdir", config.get("WorkingDir") or "/")
        for e in config.get("Env") or []:
            cmd += ["--env", e]
        cmd += [self.ctr, "--", *(config.get("Entrypoint") or []), *(config.get("Cmd") or []), f"port={self.port}"]
        log("$ " + " ".join(cmd) + " &")
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthcheck(self) -> str:
        return "not run (the server listens on another port than the HEALTHCHECK's 8000 here)"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        run(self.st.buildah("rm", self.ctr), capture=True, check=False)


def wait_health(runner, port: int, timeout: float) -> tuple[float, dict]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not runner.alive():
            raise CheckError(f"the container stopped before /health answered: {last_line(runner.logs())}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0, json.load(r)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise CheckError(f"/health did not answer within {timeout:.0f} s: {last_line(runner.logs())}")


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def post_image(port: int, image: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise CheckError(f"POST /predict answered {e.code}: {e.read().decode(errors='replace')}") from e


def server_uids() -> list[int]:
    """The real uids of the processes running the image's entry point (seen from the host: no user namespace)."""
    uids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            # python itself (not the buildah or podman process whose arguments name the same command)
            if (b"python" in Path(args[0].decode(errors="replace")).name.encode() and b"medimg.serve" in args
                    and b"ckpt_path=/models/best.ckpt" in args):
                status = (proc / "status").read_text()
                uids.append(int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1]))
        except (OSError, StopIteration, ValueError):
            continue
    return uids


def compare(host: dict, served: dict) -> float:
    results = served.get("results") or []
    if len(results) != 1:
        raise CheckError(f"/predict returned {len(results)} results for one image")
    r = results[0]
    if r["prediction"] != host["prediction"]:
        raise CheckError(f"class differs: container {r['prediction']!r}, host medimg.predict {host['prediction']!r}")
    if set(r["probabilities"]) != set(host["probabilities"]):
        raise CheckError(f"classes differ: container {sorted(r['probabilities'])}, host {sorted(host['probabilities'])}")
    diff = max(abs(r["probabilities"][c] - p) for c, p in host["probabilities"].items())
    if diff > TOLERANCE:
        raise CheckError(f"probabilities differ by {diff:.2e} (> {TOLERANCE}): container {r['probabilities']}, "
                         f"host {host['probabilities']}")
    return diff


def run_container(st: Storage, runner_names: list[str], models: Path, port: int, work: Path,
                  host: dict, image: Path, health_timeout: float) -> dict:
    errors = []
    for name in runner_names:
        runner = Podman(st, models, port) if name == "podman" else BuildahRun(st, models, port, work)
        log(f"starting the container with {runner.name} (port {port})")
        t0 = time.monotonic()
        try:
            runner.start()
        except CheckError as e:
            errors.append(f"{runner.name}: {e}")
            log(f"{runner.name} cannot run the container here: {e}")
            runner.stop()
            continue
        try:
            health_s, health = wait_health(runner, port, health_timeout)
            health_s = time.monotonic() - t0
            log(f"/health answered after {health_s:.1f} s: {health}")
            served = post_image(port, image)
            diff = compare(host, served)
            r = served["results"][0]
            log(f"/predict: {r['prediction']} {r['probabilities']} (host medimg.predict: {host['prediction']}, "
                f"largest difference {diff:.1e})")
            uids = server_uids()
            if not uids:
                raise CheckError("found no server process of the container to check its uid")
            if any(u != UID for u in uids):
                raise CheckError(f"the server runs as uid {uids}, not {UID}")
            log(f"the server process runs as uid {uids[0]}")
            hc = runner.healthcheck()
            log(f"HEALTHCHECK in the container: {hc}")
            return {"runner": runner.name, "healthcheck_run": hc, "health_s": round(health_s, 1), "max_prob_diff": diff,
                    "prediction": r["prediction"], "probabilities": r["probabilities"], "uid": uids[0],
                    "runner_errors": errors}
        finally:
            runner.stop()
            log(f"stopped and removed the container ({runner.name})")
    raise CheckError("no runner could start the container: " + "; ".join(errors))


def check_healthcheck(st: Storage) -> dict:
    info = st.image_info(IMAGE)
    hc = (info.get("Docker") or {}).get("config", {}).get("Healthcheck")
    if not hc or not hc.get("Test"):
        raise CheckError(f"the image {IMAGE} has no HEALTHCHECK in its config (built without --format docker?)")
    user = (info.get("Docker") or {}).get("config", {}).get("User")
    if str(user) != str(UID):
        raise CheckError(f"the image's USER is {user!r}, not {UID}")
    return hc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", choices=["all", "base"], default="all",
                    help="base: only build the base image if missing; all (default): the whole check")
    ap.add_argument("--root", type=Path, default=BUILD / "containers", help="storage root of buildah and podman")
    ap.add_argument("--storage-driver", choices=["overlay", "vfs"], default="overlay",
                    help="overlay (default; needs the kernel's overlayfs) or vfs (plain copies: slow, and without "
                         "the layer cache)")
    ap.add_argument("--wheels", type=Path, default=BUILD / "docker" / "wheels",
                    help="folder of wheels to install from (mounted at /wheels); missing: PyPI and the PyTorch index")
    ap.add_argument("--rebuild-base", action="store_true", help="build the base image even if it exists")
    ap.add_argument("--no-cache", action="store_true", help="build every layer again (buildah bud --no-cache)")
    ap.add_argument("--runner", choices=["auto", "podman", "buildah"], default="auto",
                    help="auto: podman run, and buildah run where podman cannot start it")
    ap.add_argument("--port", type=int, default=0, help="host port (0: a free one)")
    ap.add_argument("--health-timeout", type=float, default=300)
    a = ap.parse_args()
    try:
        st = Storage(a.root.resolve(), a.storage_driver)
        base_s = build_base(st, a.rebuild_base)
        if a.what == "base":
            return 0
        work = BUILD / "docker" / "check"
        work.mkdir(parents=True, exist_ok=True)
        wheels = a.wheels.resolve() if a.wheels.is_dir() else None
        log(f"installing from {wheels} only" if wheels else "installing from PyPI and the PyTorch CPU index")
        build_s = build_image(st, wheels, a.no_cache)
        hc = check_healthcheck(st)
        log(f"HEALTHCHECK in the image config: {hc['Test']}")
        size = st.image_size(IMAGE)
        ckpt = checkpoint(work)
        image = sample_image(work)
        host = host_prediction(work, ckpt, image)
        log(f"host medimg.predict for {image.name}: {host['prediction']} {host['probabilities']}")
        runners = {"auto": ["podman", "buildah"], "podman": ["podman"], "buildah": ["buildah"]}[a.runner]
        res = run_container(st, runners, ckpt.parent, a.port or free_port(), work, host, image, a.health_timeout)
        result = {"base_build_s": None if base_s is None else round(base_s), "image_build_s": round(build_s),
                  "image_size_bytes": size, "wheels": str(wheels) if wheels else None, "image": IMAGE,
                  "base_image": BASE_IMAGE, "healthcheck": hc["Test"], "sample": str(image.relative_to(work)),
                  "host_prediction": host, **res}
        (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"docker-check: ok: {IMAGE} ({size / 1e9:.2f} GB), built in {build_s:.0f} s"
              + (f" (base {base_s:.0f} s)" if base_s is not None else " (base image reused)")
              + f"; {res['runner']}: /health after {res['health_s']} s, /predict = medimg.predict "
              f"(max difference {res['max_prob_diff']:.1e}), uid {res['uid']}; HEALTHCHECK present")
        return 0
    except CheckError as e:
        print(f"docker-check: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
