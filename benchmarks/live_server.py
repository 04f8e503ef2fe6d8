"""A private PulseAudio server with virtual devices, started and stopped by the live benchmark.

One 2-channel null sink `rec` holds the microphone feed (left) and the loudspeaker (right) on one clock; `micsink` and
`spk` are its mono halves. The app reads `micsink.monitor` (its microphone) and plays to `spk` (its loudspeaker);
the benchmark speaks into `micsink` and records `rec.monitor`. Echo is a loopback from `spk.monitor` into `micsink`.
The server runs as a child process on its own socket under a temporary folder, so it neither needs nor disturbs a
desktop sound server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from omni_onnx.errors import OmniError

RATE = 48000  # the sinks' rate, and the recording's
TOOLS = ("pulseaudio", "pactl", "paplay", "parec")

HALF = "load-module module-remap-sink sink_name={name} master=rec channels=1 channel_map=mono " \
       "master_channel_map={side} remix=no"
CONFIG = "\n".join([
    ".fail",
    "load-module module-native-protocol-unix auth-anonymous=1 socket={socket}",
    "load-module module-null-sink sink_name=rec rate={rate} channels=2 channel_map=front-left,front-right",
    HALF.format(name="micsink", side="front-left"),
    HALF.format(name="spk", side="front-right"),
    "set-default-sink spk",
    "set-default-source micsink.monitor",
]) + "\n"


def require_tools() -> None:
    """One line naming what to install when the sound server or its client tools are missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise OmniError(f"the live suite needs a PulseAudio sound server ({', '.join(missing)} not found); install "
                        f"it with `apt-get install pulseaudio pulseaudio-utils libasound2-plugins libportaudio2`")


class SoundServer:
    """`with SoundServer() as s:` a running server; `s.env` routes a client (PortAudio's ALSA `pulse`/`default`
    devices, or the pa* tools) to it: microphone `micsink.monitor`, loudspeaker `spk`."""

    def __init__(self, start_timeout: float = 10.0):
        require_tools()
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SoundServer:
        self.dir = Path(tempfile.mkdtemp(prefix="omni-live-"))
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def socket(self) -> Path:
        return self.dir / "native"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for sub in ("run", "xdg", "home"):
            (self.dir / sub).mkdir(mode=0o700, exist_ok=True)
        env.update(PULSE_SERVER=f"unix:{self.socket}", PULSE_RUNTIME_PATH=str(self.dir / "run"),
                   XDG_RUNTIME_DIR=str(self.dir / "xdg"), XDG_CONFIG_HOME=str(self.dir / "home"),
                   PULSE_SOURCE="micsink.monitor", PULSE_SINK="spk")
        return env

    def _start(self) -> None:
        pa = self.dir / "measure.pa"
        pa.write_text(CONFIG.format(socket=self.socket, rate=RATE), encoding="utf-8")
        self.log = self.dir / "pulseaudio.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["pulseaudio", "--system=false", "--exit-idle-time=-1", "--realtime=false", "--high-priority=false",
                 "--disallow-exit", "-n", "-F", str(pa), "--daemonize=no", "--log-target=stderr"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OmniError(f"the PulseAudio server exited at start (code {self.proc.returncode}): "
                                f"{self.log.read_text(errors='replace').strip().splitlines()[-1:]}")
            if self.socket.exists() and subprocess.run(["pactl", "info"], env=self.env,
                                                       capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise OmniError(f"the PulseAudio server did not answer within {self.start_timeout:g} s; see {self.log}")

    def pactl(self, *args: str) -> str:
        out = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise OmniError(f"pactl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def add_echo(self, delay_ms: int, gain_db: float) -> int:
        """The loudspeaker leaking into the microphone, `delay_ms` late (module-loopback latency) at `gain_db`;
        returns the module index for `remove_echo`."""
        module = int(self.pactl("load-module", "module-loopback", "source=spk.monitor", "sink=micsink",
                                f"latency_msec={delay_ms}", "source_dont_move=true", "sink_dont_move=true"))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for block in self.pactl("list", "sink-inputs").split("Sink Input #")[1:]:
                if f"Owner Module: {module}\n" in block:
                    self.pactl("set-sink-input-volume", block.split("\n", 1)[0].strip(), f"{gain_db:+g}dB")
                    return module
            time.sleep(0.05)
        self.remove_echo(module)
        raise OmniError("the echo loopback did not appear among the sound server's streams")

    def remove_echo(self, module: int) -> None:
        self.pactl("unload-module", str(module))

    def play(self, wav: Path) -> subprocess.Popen:
        """Speak `wav` into the microphone (returns at once; `wait()` the result)."""
        return subprocess.Popen(["paplay", "--device=micsink", "--latency-msec=20", str(wav)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def record(self, raw: Path, timeout: float = 30.0) -> tuple[subprocess.Popen, float]:
        """Record `rec.monitor` (2-channel int16 at RATE, raw) to `raw` until the process is interrupted. Returns
        once samples arrive (parec can take seconds to start on a loaded machine), with the monotonic time of the
        file's first sample (to ~20 ms: what is there is taken as just recorded)."""
        raw.unlink(missing_ok=True)
        proc = subprocess.Popen(["parec", "--device=rec.monitor", f"--rate={RATE}", "--channels=2",
                                 "--format=s16le", "--latency-msec=20", str(raw)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            size = raw.stat().st_size if raw.exists() else 0
            if size > 0:
                return proc, time.monotonic() - size / (4 * RATE)
            time.sleep(0.01)
        stop(proc)
        raise OmniError(f"parec recorded nothing from the sound server within {timeout:g} s")

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.proc = None
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (a clean end for parec and for omni-run's Ctrl-C path), then SIGKILL if it hangs; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
