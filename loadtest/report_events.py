"""The events of `python -m loadtest.bench_reports`: one INSERT ... SELECT from numbers().

Web traffic (visits of page views, engagement reports with scroll depth and engaged time,
named custom events; referrers from search engines, social networks, webmail and other sites;
utm_* on newsletter and paid links; countries, devices, browsers and OSes), email campaigns
with Apple MPP, bots, Gmail's proxy and link scanners, ad campaigns, orders with reloads.
Every choice is a hash of the row number, so a run is repeatable.
"""

from __future__ import annotations

from analytics.schema import EVENTS


def at_sql(n: str) -> str:
    """The time of row `n`: spread over the days, busier in the afternoon than at night."""
    day = f"({n} * {{days}} / {{events_n}})"
    u = f"({day} - floor({day}))"
    return (
        f"toDateTime64(now() - INTERVAL {{days}} DAY, 3, 'UTC') + toIntervalMillisecond("
        f"toInt64((floor({day}) + {u} - 0.07 * sin(2 * pi() * {u})) * 86400000))"
    )


def uuid_sql(n: str, at: str) -> str:
    """A UUIDv7 made of row `n`'s time `at` and number: a conversion can name the click of
    another row."""
    hx = (
        f"concat(leftPad(lower(hex(toUnixTimestamp64Milli({at}))), 12, '0'), '7', "
        f"leftPad(lower(hex({n} % 4096)), 3, '0'), '8', leftPad(lower(hex({n})), 15, '0'))"
    )
    name = f"hex_{n}"
    spans = [f"substr(({hx}) AS {name}, 1, 8)"]
    spans += [f"substr({name}, {a}, {b})" for a, b in ((9, 4), (13, 4), (17, 4), (21, 12))]
    dash = ", '-', "
    return f"toUUID(concat({dash.join(spans)}))"


# Where visitors come from, as (referrer host, utm query) per kind of visit; a visit's kind
# and its pick within the kind are hashes of the visit. Hosts from analytics/sources.py's
# lists (as browsers send them: with www., m., l.), and the ref<k>.example sites of before.
SEARCH = (
    "www.google.com", "www.google.com", "www.google.com", "www.google.de", "www.google.co.uk",
    "www.bing.com", "duckduckgo.com", "search.yahoo.com", "yandex.ru", "www.ecosia.org",
    "search.brave.com", "kagi.com",
)  # fmt: skip
SOCIAL = (
    "m.facebook.com", "www.facebook.com", "t.co", "www.reddit.com", "news.ycombinator.com",
    "www.linkedin.com", "lnkd.in", "l.instagram.com", "www.youtube.com", "bsky.app",
)  # fmt: skip
WEBMAIL = (
    "mail.google.com", "outlook.live.com", "mail.proton.me", "app.fastmail.com", "mail.yahoo.com",
)  # fmt: skip
# ISO codes by share of visitors, most first; "" (unknown) among them.
COUNTRIES = (
    "US", "DE", "GB", "FR", "IN", "", "CA", "NL", "BR", "ES", "IT", "JP", "AU", "PL", "SE", "CH",
    "BE", "AT", "MX", "TR", "KR", "ID", "DK", "NO", "FI", "IE", "PT", "CZ", "UA", "RO", "AR", "ZA",
    "NZ", "SG", "IL", "HU", "GR", "CO", "CL", "PH", "VN",
)  # fmt: skip
# Custom events' names, repeated by weight.
CUSTOM_EVENTS = (
    "download", "download", "download", "signup", "signup", "newsletter", "contact", "play_video",
)  # fmt: skip
# The bench's goals: two custom events and the page a signup lands on.
GOALS = ("signup", "download", "/thanks")
# The page views of a site's 10-minute slot fall on its sessions by pow(uniform, SESSION_SKEW),
# PAGEVIEWS_PER_SESSION of them a session: about 30 % of the sessions get none, a few get
# dozens, and the rest 2.5 on average, half of them a single one (a bounce).
SESSION_SKEW = 2.5
PAGEVIEWS_PER_SESSION = 1.75
SESSIONS_USED = 0.7
SESSIONS_PER_VISITOR = 2.0
PAGEVIEW_SHARE = 0.45  # of every 10,000 rows, 4,500 are page views


def sql_array(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def pick(values: tuple[str, ...], hash_sql: str) -> str:
    return f"{sql_array(values)}[1 + ({hash_sql}) % {len(values)}]"


# One row per event; every choice is a hash of the row number, so a run is repeatable.
# In each block of 10,000 rows: page views, engagement (scroll depth, engaged time), sends,
# opens (a quarter Apple MPP or bots, a tenth through Gmail's proxy), email clicks (the first
# three a link scanner's burst), ad impressions and clicks, orders (naming a click of the
# block, some ids repeated), custom events (named).
#
# Web rows make visits: each site's day is cut in 10-minute slots, a page view falls on one
# of its slot's sessions (skewed: some long, most short), an engagement report or a custom
# event on the session of a page view a few seconds before it, and each session is one of the
# site's visitors of the day (ids rotate daily), so a visitor has about two sessions at random
# times of the day: the 30-minute gap joins the close ones and splits the others. A session
# comes from one place (referrer, utm_* on its landing pages); a quarter of its page views are
# internal navigation (the site's own page as referrer). Country, device, browser and OS are
# the visitor's.
GENERATE = """
INSERT INTO {events} (schema_version, event_id, received_at, event_type, site, campaign,
  message, recipient, ad, url_host, url_path, url_query, referrer, props, user_agent,
  browser, os, device_type, ip, country, visitor_id, verified, click_id, order_id, value,
  currency, machine_open, machine_reason, mail_proxy, is_bot, consent, transport)
SELECT 2, event_id, t, kind, site, campaign, message, recipient, ad, url_host, url_path,
  url_query, referrer, props, 'Mozilla/5.0 (X11; Linux x86_64)', browser, os, device_type,
  '203.0.113.0', country, visitor_id, verified,
  multiIf(kind = 'click', toString(event_id), kind = 'conversion' AND h1 % 5 != 0,
          toString(CLICK_UUID), ''), order_id, value, currency, machine_open,
  if(machine_open, if(is_bot, 'bot_user_agent', 'apple_mpp'), ''), mail_proxy, is_bot,
  'not_required', 'pixel'
FROM (
  SELECT *, cityHash64(n, 1) AS h1, cityHash64(n, 2) AS h2, UUID_N AS event_id,
    cityHash64(lead_n, 1) AS lead_h,
    -- the click an order names: an ad click of its block, or an email click
    n - slot + if(h1 % 2 = 0, 9850 + n % 50, 9103 + n % 147) AS click_n,
    multiIf(slot < 4500, 'pageview', slot < 7500, 'engagement', slot < 8500, 'send',
            slot < 9100, 'open', slot < 9250, 'click', slot < 9850, 'impression',
            slot < 9900, 'click', slot < 9950, 'conversion', 'custom') AS kind,
    kind IN ('pageview', 'engagement', 'custom') AS web,
    slot >= 7500 AND slot < 9250 AS email, slot >= 9250 AND slot < 9900 AS advert,
    multiIf(email OR kind = 'conversion', 'shop', advert, 'news',
            ['blog', 'news', 'docs', 'shop'][1 + lead_h % 4]) AS site,
    -- a scanner's three clicks (rows in a row) are on one message
    if(slot >= 9100 AND slot < 9103, intDiv(n, 10000) % 20, h2 % 20) AS c,
    multiIf(email, concat('mail-', toString(c)), advert, concat('fall-', toString(c % 10)), '')
      AS campaign,
    if(email, concat('m-', toString(c)), '') AS message,
    -- three clicks in a row (0.26 s apart) on every link: a link scanner's burst
    multiIf(slot >= 9100 AND slot < 9103, concat('scan-', toString(intDiv(n, 10000))),
            email, concat('u-', toString(cityHash64(n, 3) % 50000)), '') AS recipient,
    if(advert, concat('banner-', toString(h1 % 4)), '') AS ad,
    multiIf(web, concat(site, '.example'), kind = 'click', 'shop.example', '') AS url_host,
    -- now and then a page view is the page a signup lands on
    multiIf(web AND cityHash64(lead_n, 5) % 100 = 0, '/thanks',
            web, concat('/p/', toString(toUInt32(pow((lead_h % 1000000) / 1e6, 3) * 500))),
            kind = 'click', concat('/l', toString(if(slot < 9103, slot - 9100, h1 % 3))), '')
      AS url_path,
    -- the session: which of its 10-minute slot's sessions the row falls on
    toDate(lead_t) AS day, intDiv(toUnixTimestamp(lead_t) % 86400, 600)
      AS ten_min,
    toUInt32(pow((cityHash64(lead_n, 7) % 1000000) / 1e6, {session_skew}) * {sessions})
      AS session_n,
    cityHash64(day, site, ten_min, session_n) AS session,
    if(web OR advert,
       cityHash64(day, site, cityHash64(day, ten_min, session_n) % {visitors_per_day}) + 1, 0)
      AS visitor_id,
    -- where the session came from: direct 35 %, search 25, social 12, webmail 4, other
    -- sites 10, a newsletter link 8 (utm_medium=email), a paid campaign 6 (social or cpc)
    session % 100 AS way, intDiv(session, 100) AS way_pick,
    multiIf(way < 35, '', way < 60, PICK_SEARCH, way < 72, PICK_SOCIAL, way < 76, PICK_WEBMAIL,
            way < 86, concat('ref', toString(way_pick % 40), '.example'),
            way < 94, if(way_pick % 3 = 0, 'mail.google.com', ''),
            if(way_pick % 2 = 0, 'm.facebook.com', 'www.google.com')) AS from_host,
    multiIf(way < 86, '',
            way < 94, concat('utm_source=newsletter&utm_medium=email&utm_campaign=mail-',
                             toString(way_pick % 20)),
            concat(if(way_pick % 2 = 0, 'utm_source=facebook&utm_medium=social',
                      'utm_source=google&utm_medium=cpc'),
                   '&utm_campaign=fall-', toString(way_pick % 10))) AS from_query,
    kind = 'pageview' AND cityHash64(n, 4) % 4 = 0 AS internal,
    multiIf(kind != 'pageview', '', internal,
            concat('https://', url_host, '/p/', toString(h2 % 50)),
            from_host = '', '', concat('https://', from_host, '/')) AS referrer,
    if(kind = 'pageview' AND NOT internal, from_query, '') AS url_query,
    multiIf(kind = 'engagement',
            map('scroll_pct', toString(h2 % 101),
                'engaged_ms',
                toString(toUInt32(pow((cityHash64(n, 8) % 10007) / 10007, 2) * 60000))),
            kind = 'custom', map('event', PICK_EVENT), map()) AS props,
    -- the visitor's: a country (Zipf-like), a device, its OS and browser
    if(visitor_id != 0, visitor_id, n) AS who,
    COUNTRY_BY_RANK[toUInt32(exp((cityHash64(who, 11) % 1000000) / 1e6 * log({countries})))]
      AS country,
    cityHash64(who, 12) % 100 AS d, cityHash64(who, 13) % 100 AS o,
    cityHash64(who, 14) % 100 AS b,
    multiIf(is_bot, 'bot', d < 55, 'desktop', d < 93, 'mobile', 'tablet') AS device_type,
    multiIf(is_bot, 'Other', device_type = 'desktop',
            multiIf(o < 72, 'Windows', o < 90, 'Mac OS X', o < 97, 'Linux', 'Chrome OS'),
            device_type = 'mobile', if(o < 62, 'Android', 'iOS'),
            if(o < 55, 'iOS', 'Android')) AS os,
    multiIf(is_bot, 'Googlebot',
            os = 'Windows', multiIf(b < 68, 'Chrome', b < 84, 'Edge', b < 94, 'Firefox', 'Opera'),
            os = 'Mac OS X', multiIf(b < 55, 'Safari', b < 88, 'Chrome', 'Firefox'),
            os = 'Linux', if(b < 70, 'Chrome', 'Firefox'), os = 'Chrome OS', 'Chrome',
            os = 'Android', multiIf(b < 75, 'Chrome Mobile', b < 92, 'Samsung Internet',
                                    'Firefox Mobile'),
            if(b < 80, 'Mobile Safari', 'Chrome Mobile iOS')) AS browser,
    toUInt8(kind != 'send') AS verified,
    if(kind = 'conversion', concat('o-', toString(cityHash64(n, 9) % {orders})), '') AS order_id,
    if(kind = 'conversion', toDecimal64(h2 % 20000, 4) / 100, toDecimal64(0, 4)) AS value,
    if(kind = 'conversion', ['EUR', 'USD'][1 + h1 % 2], '') AS currency,
    toUInt8(kind = 'open' AND h1 % 4 = 0) AS machine_open,
    multiIf(machine_open, 'apple', kind = 'open' AND h1 % 10 = 1, 'gmail', '') AS mail_proxy,
    toUInt8(cityHash64(lead_n, 2) % 100 = 7) AS is_bot
  -- times in a subquery of their own: an alias would be inlined into each use
  FROM (
    SELECT *, AT_N AS t, LEAD_AT AS lead_t
    FROM (
      -- the page view an engagement report or a custom event follows: its session, site and
      -- page. Page views are spread over their block's time, the others keep their row's
      -- place (a scanner's burst: rows in a row), one that follows a page view comes 1 to
      -- 30 s after it.
      SELECT number AS n, n % 10000 AS slot,
        n - slot + multiIf(slot >= 4500 AND slot < 7500, intDiv((slot - 4500) * 3, 2),
                           slot >= 9950, (slot - 9950) * 90, slot) AS lead_n,
        lead_n - lead_n % 10000 + (lead_n % 10000) * 20 / 9 AS lead_at_n,
        multiIf(slot < 4500, lead_at_n, slot < 7500 OR slot >= 9950,
                lead_at_n + 4 + cityHash64(n, 10) % 116, n) AS at_n
      FROM numbers({events_n})
    )
  )
)
SETTINGS max_insert_block_size = 100000, min_insert_block_size_rows = 100000
"""


# Web events of the last minute (realtime reads the last five): two a second, on every site.
LIVE = f"""
INSERT INTO {EVENTS} (schema_version, event_id, received_at, event_type, site, url_host,
  url_path, visitor_id, verified, consent, transport)
SELECT 2, generateUUIDv7(), now64(3) - toIntervalMillisecond(number * 500),
  if(number % 3 = 0, 'engagement', 'pageview'), ['blog', 'news', 'docs', 'shop'][1 + number % 4]
  AS site, concat(site, '.example'), concat('/p/', toString(number % 7)), 1 + number % 40, 1,
  'not_required', 'pixel'
FROM numbers(120)
"""


def generate_sql(events_n: int, days: int) -> str:
    """The INSERT of `events_n` events over the last `days` days, up to now."""
    n = events_n
    template = (
        GENERATE.replace("AT_N", at_sql("at_n"))
        .replace("UUID_N", uuid_sql("n", "t"))
        .replace("CLICK_UUID", uuid_sql("click_n", at_sql("click_n")))
        .replace("LEAD_AT", at_sql("lead_at_n"))
        .replace("PICK_SEARCH", pick(SEARCH, "way_pick"))
        .replace("PICK_SOCIAL", pick(SOCIAL, "way_pick"))
        .replace("PICK_WEBMAIL", pick(WEBMAIL, "way_pick"))
        .replace("PICK_EVENT", pick(CUSTOM_EVENTS, "cityHash64(n, 6)"))
        .replace("COUNTRY_BY_RANK", sql_array(COUNTRIES))
    )
    # A site's page views per 10-minute slot, spread over sessions and visitors.
    slot_pageviews = n / days * PAGEVIEW_SHARE / 4 / 144
    sessions = max(1, round(slot_pageviews / PAGEVIEWS_PER_SESSION))
    visitors = sessions * SESSIONS_USED * 144 / SESSIONS_PER_VISITOR
    return template.format(
        events=EVENTS, days=days, events_n=n, sessions=sessions, session_skew=SESSION_SKEW,
        visitors_per_day=max(1, round(visitors)),
        countries=len(COUNTRIES) + 1, orders=max(10, n * 9 // 2000),
    )  # fmt: skip
