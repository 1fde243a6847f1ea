"""Knowledge exchange between sites: signed packages of fast memory, trust lists, merging."""

from edgelearn.errors import SignatureError
from edgelearn.knowledge.keys import SiteKey, TrustStore
from edgelearn.knowledge.merge import merge_packages, provenance
from edgelearn.knowledge.package import (
    FORMAT,
    VERSION,
    ImportPolicy,
    package_bytes,
    parse_package,
    read_package,
    write_package,
)

__all__ = ["FORMAT", "VERSION", "ImportPolicy", "SignatureError", "SiteKey", "TrustStore", "merge_packages",
           "package_bytes", "parse_package", "provenance", "read_package", "write_package"]
