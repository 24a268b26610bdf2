"""Where a visit came from: its referrer's host, less the site's own, and the source group.

The host lists are a short selection from Matomo's searchengine-and-social-list
(https://github.com/matomo-org/searchengine-and-social-list: SearchEngines.yml, Socials.yml),
the list Matomo maintains for its own referrer reports, reviewed 2026-12; mail web clients
from the providers' own hosts. A host matches when it is a listed host or a subdomain of one
(`m.facebook.com` is `facebook.com`); `google.*` stands for any of Google's country domains.
"""

from __future__ import annotations

from collections.abc import Mapping

from analytics.report_window import sql_string

SEARCH_HOSTS = (
    "google.*", "bing.com", "duckduckgo.com", "yahoo.*", "yandex.*", "baidu.com",
    "ecosia.org", "search.brave.com", "startpage.com", "qwant.com", "kagi.com", "naver.com",
    "seznam.cz", "sogou.com", "ask.com", "aol.com",
)  # fmt: skip
SOCIAL_HOSTS = (
    "facebook.com", "t.co", "twitter.com", "x.com", "linkedin.com", "lnkd.in", "reddit.com",
    "instagram.com", "youtube.com", "youtu.be", "pinterest.*", "tiktok.com",
    "news.ycombinator.com", "mastodon.social", "bsky.app", "threads.net", "vk.com",
    "weibo.com", "tumblr.com", "quora.com",
)  # fmt: skip
WEBMAIL_HOSTS = (
    "mail.google.com", "outlook.live.com", "outlook.office.com", "outlook.office365.com",
    "mail.yahoo.com", "mail.proton.me", "app.fastmail.com", "mail.aol.com",
)  # fmt: skip
# utm_medium values (lower case) that name the channel whatever the referrer says.
EMAIL_MEDIUMS = ("email", "e-mail", "newsletter", "mail")
SOCIAL_MEDIUMS = ("social", "social-media", "social_media")
GROUPS = ("search", "social", "email", "direct", "other")


def host_sql(column: str) -> str:
    """A URL's or host's host in lower case, without a leading `www.`."""
    return f"replaceRegexpOne(lower({column}), '^www\\\\.', '')"


def hosts_regexp(hosts: tuple[str, ...]) -> str:
    """One RE2 pattern matching any of `hosts` or a subdomain of one."""
    names = [h.replace(".", "\\.").replace("\\.*", "\\.[a-z.]+") for h in hosts]
    return f"(^|\\.)({'|'.join(names)})$"


def site_hosts_sql(site_hosts: Mapping[str, tuple[str, ...]]) -> str:
    """The hosts each site names as its own (BEACON_SITE_HOSTS), by site, as SQL."""
    if not site_hosts:
        return ""
    keys = ", ".join(sql_string(site) for site in site_hosts)
    values = ", ".join(
        "[" + ", ".join(sql_string(h.lower().removeprefix("www.")) for h in hosts) + "]"
        for hosts in site_hosts.values()
    )
    return f"arrayElement(CAST(([{keys}], [{values}]), 'Map(String, Array(String))'), site)"


def referrer_sql(site_hosts: Mapping[str, tuple[str, ...]]) -> str:
    """A visit's referrer host, `''` when it is the site itself: the page's own host, or one
    of the site's hosts. Over a visit row (analytics/visits.py)."""
    own = "referrer_host = landing_host"
    if site_hosts:
        own += f" OR has({site_hosts_sql(site_hosts)}, referrer_host)"
    return f"if({own}, '', referrer_host)"


def source_sql(referrer: str) -> str:
    """The source group of a visit whose own-host-free referrer host is `referrer`; the
    first rule that holds (docs/reports.md "Sources")."""
    medium = "lower(utm_medium)"

    def among(values: tuple[str, ...]) -> str:
        return ", ".join(sql_string(v) for v in values)

    def matches(hosts: tuple[str, ...]) -> str:
        return f"match({referrer}, {sql_string(hosts_regexp(hosts))})"

    return (
        f"multiIf({medium} IN ({among(EMAIL_MEDIUMS)}), 'email', "
        f"{medium} IN ({among(SOCIAL_MEDIUMS)}), 'social', "
        f"{matches(WEBMAIL_HOSTS)}, 'email', "  # before search: mail.google.com is google.*
        f"{matches(SEARCH_HOSTS)}, 'search', "
        f"{matches(SOCIAL_HOSTS)}, 'social', "
        f"{referrer} = '' AND utm_source = '', 'direct', 'other')"
    )
