"""Conversions between the wire messages (``edgefleet.v1``) and plain typed objects.

Both sides need them (the agent sends its profile, the coordinator validates
it), so they live in the shared package. Servicers call these at the edge and
hand plain objects to the core logic.
"""

from __future__ import annotations

from edgefleet.limits import MAX_ACCELERATORS, MAX_PRECISIONS, MAX_RUNTIMES
from edgefleet.profiles import DeviceClass, DeviceProfile, ProfileError, validate_profile
from edgefleet.v1 import profile_pb2

_CLASS_TO_WIRE: dict[DeviceClass, int] = {
    DeviceClass.PHONE: profile_pb2.DEVICE_CLASS_PHONE,
    DeviceClass.SBC: profile_pb2.DEVICE_CLASS_SBC,
    DeviceClass.ACCELERATOR: profile_pb2.DEVICE_CLASS_ACCELERATOR,
    DeviceClass.MCU: profile_pb2.DEVICE_CLASS_MCU,
    DeviceClass.SERVER: profile_pb2.DEVICE_CLASS_SERVER,
}
_WIRE_TO_CLASS: dict[int, DeviceClass] = {v: k for k, v in _CLASS_TO_WIRE.items()}


def profile_to_proto(profile: DeviceProfile) -> profile_pb2.DeviceProfile:
    return profile_pb2.DeviceProfile(
        name=profile.name,
        device_class=_CLASS_TO_WIRE[profile.device_class],  # type: ignore[arg-type]
        arch=profile.arch,
        cpu=profile.cpu,
        cpu_cores=profile.cpu_cores,
        cpu_mhz=profile.cpu_mhz,
        ram_bytes=profile.ram_bytes,
        storage_bytes=profile.storage_bytes,
        accelerators=list(profile.accelerators),
        precisions=list(profile.precisions),
        runtimes=list(profile.runtimes),
        battery_mah=profile.battery_mah,
        link_kbps=profile.link_kbps,
        simulated=profile.simulated,
        sram_region_bytes=profile.sram_region_bytes,
    )


def profile_from_proto(msg: profile_pb2.DeviceProfile) -> DeviceProfile:
    """Validate a profile received on the wire; raise ``ProfileError`` naming the field.

    The repeated fields are counted before anything is copied out of the message,
    so an oversized list costs nothing beyond its decoding.
    """
    for name, cap in (
        ("accelerators", MAX_ACCELERATORS),
        ("precisions", MAX_PRECISIONS),
        ("runtimes", MAX_RUNTIMES),
    ):
        if len(getattr(msg, name)) > cap:
            raise ProfileError(name, f"at most {cap} entries")
    device_class = _WIRE_TO_CLASS.get(int(msg.device_class))
    if device_class is None:
        raise ProfileError(
            "device_class", f"unknown or unspecified device class {msg.device_class}"
        )
    return validate_profile(
        {
            "name": msg.name,
            "device_class": device_class,
            "arch": msg.arch,
            "cpu": msg.cpu,
            "cpu_cores": msg.cpu_cores,
            "cpu_mhz": msg.cpu_mhz,
            "ram_bytes": msg.ram_bytes,
            "storage_bytes": msg.storage_bytes,
            "accelerators": tuple(msg.accelerators),
            "precisions": tuple(msg.precisions),
            "runtimes": tuple(msg.runtimes),
            "battery_mah": msg.battery_mah,
            "link_kbps": msg.link_kbps,
            "simulated": msg.simulated,
            "sram_region_bytes": msg.sram_region_bytes,
        }
    )
