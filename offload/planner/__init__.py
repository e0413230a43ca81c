"""The planner: hardware profiles and the memory / throughput plan made from them."""

from offload.planner.profile import (
    Profile,
    ProfileError,
    detect_profile,
    list_profiles,
    load_profile,
    profile_from_toml,
)

__all__ = ["Profile", "ProfileError", "detect_profile", "list_profiles", "load_profile", "profile_from_toml"]
