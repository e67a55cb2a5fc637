"""Which site's operating point the gateway is asked for, per received image.

A hospital group may run one node for several sites whose scanners were each checked by site
acceptance; the gateway applies a site's accepted operating point only when asked for that site
(``?site=`` on the compare), never by guessing. The node asks by:
- the calling AE title the image came from (``--site AET=SITE``): the sender the node admitted,
  so it is checked at association; it wins over
- the image's Institution Name (``--site-institution "NAME=SITE"``, compared without case and
  surrounding spaces): for senders that forward several sites' images (a central PACS), and
  STOW-RS, which has no AE title. A header anyone can write, hence second.
An image matched by neither is asked without a site: the model's own operating point.
The Institution Name is never logged (it narrows down who the patient is).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from dicom_node.inbox import Instance

# the gateway's site names (serving.sites): the node refuses a mistyped one at start, not per image
SITE = re.compile(r"[a-z0-9-]{1,32}")


@dataclass(frozen=True)
class SiteMap:
    by_aet: Mapping[str, str] = field(default_factory=dict)            # calling AE title -> site
    by_institution: Mapping[str, str] = field(default_factory=dict)    # institution name, casefolded -> site

    def site_for(self, instance: Instance) -> str | None:
        if instance.sender and instance.sender in self.by_aet:
            return self.by_aet[instance.sender]
        if instance.institution:
            return self.by_institution.get(_key(instance.institution))
        return None


def parse(aets: list[str], institutions: list[str], senders: Mapping[str, object] | None = None) -> SiteMap:
    """``--site AET=SITE`` and ``--site-institution NAME=SITE`` values; an AE title must be one of
    ``senders`` (when given): a mapping for a title the node never admits is a typo."""
    by_aet, by_institution = {}, {}
    for value in aets:
        title, _, site = value.partition("=")
        title = title.strip()
        if not 1 <= len(title) <= 16 or "\\" in title:
            raise ValueError(f"--site {value!r}: give AET=SITE, an AE title of 1 to 16 characters")
        if senders is not None and title not in senders:
            raise ValueError(f"--site {value!r}: {title} is not a --sender, so no image comes from it")
        by_aet[title] = _site(site, "--site", value)
    for value in institutions:
        name, _, site = value.rpartition("=")
        if not name.strip() or len(name.strip()) > 64:
            raise ValueError(f"--site-institution {value!r}: give NAME=SITE, an Institution Name of 1 to 64 characters")
        by_institution[_key(name)] = _site(site, "--site-institution", value)
    return SiteMap(by_aet, by_institution)


def _site(site: str, option: str, value: str) -> str:
    if not SITE.fullmatch(site.strip()):
        raise ValueError(f"{option} {value!r}: a site is 1 to 32 of a-z, 0-9 and '-' (as the site profile names it)")
    return site.strip()


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()
