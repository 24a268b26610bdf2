"""Pages with ad slots for the viewability tests: a publisher's page on one loopback origin, ad
frames from a second origin (another port under another host name: another site), and in the
page a function that holds a slot in view for a while, timed by the page's own clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from aiohttp import web
from aiohttp.test_utils import TestServer

# Far more than a window is tall: one slot in view at a time, none at the top of the page.
GAP_PX = 1500
SIZES_PX = {"display": (300, 250), "large": (970, 250), "video": (640, 360)}

# showFor(id, share, ms): scroll so that `share` of the element's height shows at the bottom of
# the window (all of it centred, for 1) and resolve `ms` later by the page's clock;
# holdInView: the same, then back to the top, where no slot shows. Instant scrolls.
HOLD_SCRIPT = """<script>
function showFor(id, share, ms) {
  var el = document.getElementById(id);
  var box = el.getBoundingClientRect();
  var top = box.top + window.scrollY;
  var centred = top - (innerHeight - box.height) / 2;
  window.scrollTo(0, share >= 1 ? centred : top - innerHeight + share * box.height);
  return new Promise(function (done) { setTimeout(done, ms); });
}
function holdInView(id, share, ms) {
  return showFor(id, share, ms).then(function () { window.scrollTo(0, 0); });
}
</script>"""


@dataclass(frozen=True)
class Slot:
    """An ad slot: its id (data-beacon-ad), size, and whether it holds a <video> or says so."""

    ad: str
    size: str = "display"  # a key of SIZES_PX
    video: str = ""  # "marked": data-beacon-kind="video"; "element": it holds a <video>

    def html(self) -> str:
        width, height = SIZES_PX[self.size]
        kind = ' data-beacon-kind="video"' if self.video == "marked" else ""
        inner = (
            '<video muted width="100%" height="100%"></video>' if self.video == "element" else ""
        )
        return (
            f'<div id="{escape(self.ad)}" data-beacon-ad="{escape(self.ad)}" '
            f'data-beacon-campaign="fall"{kind} '
            f'style="width:{width}px;height:{height}px;background:#c33">{inner}</div>'
        )


def ad_tag(collector: str) -> str:
    return f'<script async src="{escape(collector)}/a.js" data-site="news"></script>'


def publisher_page(collector: str, slots: list[Slot], frame_base: str = "", extra: str = "") -> str:
    """The page; with `frame_base`, each slot is an iframe of `frame_base`/frame/<ad> (the ad
    tag runs in the frame), else a slot in the page itself; `extra` ends the body."""
    parts = []
    for slot in slots:
        if frame_base:
            width, height = SIZES_PX[slot.size]
            parts.append(
                f'<iframe id="{escape(slot.ad)}" src="{escape(frame_base)}/frame/{escape(slot.ad)}"'
                f' width="{width}" height="{height}" style="border:0;display:block"'
                ' scrolling="no"></iframe>'
            )
        else:
            parts.append(slot.html())
    spacer = f'<div style="height:{GAP_PX}px"></div>'
    body = spacer + spacer.join(parts) + spacer + extra
    tag = "" if frame_base else ad_tag(collector)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>News</title>'
        f'{tag}{HOLD_SCRIPT}</head><body style="margin:0">{body}</body></html>'
    )


def frame_document(collector: str, slot: Slot) -> str:
    """What an ad server serves into the iframe: the slot filling it, and the ad tag."""
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f'{ad_tag(collector)}</head><body style="margin:0;overflow:hidden">{slot.html()}'
        "</body></html>"
    )


class Pages:
    """An HTTP server on loopback answering a fixed HTML document per path."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # the name the URLs use; the server listens on 127.0.0.1
        self.documents: dict[str, str] = {}
        self.server: TestServer | None = None

    async def answer(self, request: web.Request) -> web.Response:
        html = self.documents.get(request.path)
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(text=html, content_type="text/html")

    async def __aenter__(self) -> Pages:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.answer)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.port}"
