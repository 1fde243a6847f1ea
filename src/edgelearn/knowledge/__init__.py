"""Knowledge exchange between sites: signed packages of fast memory, trust lists, merging."""

from edgelearn.errors import SignatureError
from edgelearn.knowledge.keys import SiteKey, TrustStore
from edgelearn.knowledge.package import FORMAT, VERSION, read_package, write_package

__all__ = ["FORMAT", "VERSION", "SignatureError", "SiteKey", "TrustStore", "read_package", "write_package"]
