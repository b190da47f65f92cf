"""Simulated battery drain from the work a device does, and real temperature where it exists.

Why a model rather than a reading: simulated devices have no battery, yet participant
selection (federated rounds) and dashboards need a charge level that responds to work. The
model is deliberately simple and stated: energy = active power x busy seconds (inference and
training, in *device* time: wall time for torch/onnxruntime, the cycle model's time for
mcu-sim) + idle power x wall seconds, drawn from ``battery_mah`` at a nominal cell voltage.
Power figures are per device class, round numbers from public datasheets' orders of magnitude
(a phone SoC's big cores ~3 W, a Pi ~4 W under load, an ESP32-S3 ~0.25 W), not measurements.

Temperature: only *measured* temperatures are reported (``psutil.sensors_temperatures`` on a
real Linux host). A simulated device reports none: a thermal model with invented constants
would look like data and mean nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from edgefleet.profiles import DeviceClass, DeviceProfile

__all__ = ["POWER_WATTS", "Battery", "PowerFigures", "measured_temperature_c"]

NOMINAL_CELL_VOLTS = 3.7  # Li-ion nominal voltage


@dataclass(frozen=True)
class PowerFigures:
    active_watts: float  # while inferring or training (one busy core + memory)
    idle_watts: float  # agent idle, radio in power save


POWER_WATTS: dict[DeviceClass, PowerFigures] = {
    DeviceClass.PHONE: PowerFigures(active_watts=3.0, idle_watts=0.05),
    DeviceClass.SBC: PowerFigures(active_watts=4.0, idle_watts=2.0),
    DeviceClass.ACCELERATOR: PowerFigures(active_watts=7.5, idle_watts=2.5),
    DeviceClass.MCU: PowerFigures(active_watts=0.25, idle_watts=0.005),
    DeviceClass.SERVER: PowerFigures(active_watts=60.0, idle_watts=30.0),
}


class Battery:
    """Charge of a battery-powered profile; ``None`` percent for mains-powered ones."""

    def __init__(
        self,
        profile: DeviceProfile,
        initial_percent: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.power = POWER_WATTS[profile.device_class]
        self.capacity_joules = profile.battery_mah / 1000.0 * NOMINAL_CELL_VOLTS * 3600.0
        self._remaining = self.capacity_joules * max(0.0, min(100.0, initial_percent)) / 100.0
        self._clock = clock
        self._last = clock()
        self.consumed_joules = 0.0

    @property
    def present(self) -> bool:
        return self.capacity_joules > 0

    def record(self, busy_seconds: float) -> float:
        """Account for ``busy_seconds`` of work plus idle draw since the last call; joules used."""
        now = self._clock()
        wall = max(0.0, now - self._last)
        self._last = now
        busy = max(0.0, busy_seconds)  # may exceed ``wall``: work done in earlier intervals
        joules = busy * self.power.active_watts + max(0.0, wall - busy) * self.power.idle_watts
        self.consumed_joules += joules
        self._remaining = max(0.0, self._remaining - joules)
        return joules

    @property
    def percent(self) -> float | None:
        if not self.present:
            return None
        return 100.0 * self._remaining / self.capacity_joules


def measured_temperature_c(profile: DeviceProfile) -> float | None:
    """The hottest CPU/SoC sensor on a real host; None for simulated devices or no sensors."""
    if profile.simulated:
        return None
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    temps = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(temps) if temps else None
