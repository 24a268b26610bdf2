"""The dashboard's one stylesheet, the HTML document around a page, and the sign-in page."""

from __future__ import annotations

from html import escape

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:#1c2333;background:#f4f6fa}
a{color:inherit}
header{display:flex;align-items:center;flex-wrap:wrap;gap:10px 22px;padding:12px 28px;
  background:#fff;border-bottom:1px solid #e3e7ee}
header h1{font-size:18px;margin:0;letter-spacing:.02em}
header .range{color:#667085;font-size:13px}
header nav{display:flex;gap:4px}
header nav a{padding:5px 10px;border-radius:6px;color:#445;text-decoration:none}
header nav a.on{background:#1c2333;color:#fff}
header .end{margin-left:auto;display:flex;gap:14px;align-items:center}
header form{margin:0}
button{font:inherit;border:1px solid #cfd5df;background:#fff;border-radius:6px;padding:5px 11px}
.picker{position:relative}
.picker summary{list-style:none;cursor:pointer;border:1px solid #cfd5df;border-radius:6px;
  padding:5px 12px;font-weight:600;min-width:140px}
.picker summary::-webkit-details-marker{display:none}
.picker summary::after{content:" \\25BE";color:#8a94a6}
.picker ul{position:absolute;z-index:2;margin:4px 0 0;padding:6px 0;list-style:none;
  background:#fff;border:1px solid #e3e7ee;border-radius:8px;min-width:240px;
  box-shadow:0 8px 24px rgba(16,24,40,.12)}
.picker li a{display:flex;justify-content:space-between;gap:16px;padding:5px 14px;
  text-decoration:none}
.picker li a:hover,.picker li a.on{background:#f0f4fd}
.picker small{color:#8a94a6}
.filters{display:flex;flex-wrap:wrap;align-items:center;gap:8px;padding:10px 28px;
  background:#fbfcfe;border-bottom:1px solid #e3e7ee;font-size:13px;min-height:46px}
.filters .hint{color:#8a94a6}
.chip{display:inline-flex;align-items:center;gap:6px;background:#e8effd;color:#1d3f8f;
  border-radius:999px;padding:3px 6px 3px 12px}
.chip b{font-weight:600;max-width:320px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.chip a{display:inline-block;width:20px;height:20px;line-height:19px;text-align:center;
  border-radius:50%;text-decoration:none;color:#1d3f8f}
.chip a:hover{background:#cddcfb}
.filters .clear{margin-left:4px;color:#b42318}
main{padding:20px 28px;display:grid;gap:16px;grid-template-columns:repeat(6,1fr);
  max-width:1560px}
main>h2{grid-column:1/-1;margin:14px 0 -4px;font-size:16px;color:#344}
main>h2 small{font-weight:400;color:#8a94a6;font-size:12px;margin-left:8px}
.kpis{grid-column:1/-1;display:grid;grid-template-columns:repeat(7,1fr);gap:12px}
.kpis.mail{grid-template-columns:repeat(4,1fr)}
.kpi,.card{background:#fff;border:1px solid #e3e7ee;border-radius:10px;min-width:0}
.kpi{padding:12px 14px}
.kpi .label{color:#667085;font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.kpi .value{font-size:24px;font-weight:600;margin-top:2px;white-space:nowrap}
.kpi .value small{font-size:14px;font-weight:500;color:#667085}
.kpi .note{color:#667085;font-size:12px}
.kpi.live .label::before{content:"";display:inline-block;width:8px;height:8px;margin-right:6px;
  border-radius:50%;background:#14a37f;box-shadow:0 0 0 3px #d1f2e8}
.card{padding:14px 16px;grid-column:span 2;overflow:hidden}
.card.half{grid-column:span 3}
.card h3{font-size:13px;margin:0 0 8px;color:#344}
.wide{grid-column:1/-1}
.chart{width:100%;height:auto;font-size:11px;fill:#6b7485}
table{width:100%;border-collapse:collapse;table-layout:auto}
th,td{padding:5px 6px;text-align:right;white-space:nowrap}
th{font-size:12px;color:#667085;font-weight:500;border-bottom:1px solid #e3e7ee}
td{border-bottom:1px solid #f0f2f6;font-variant-numeric:tabular-nums}
th.key,td.key{text-align:left}
td.key{max-width:240px;overflow:hidden;text-overflow:ellipsis;
  background:linear-gradient(90deg,#e8effd var(--w,0),transparent var(--w,0))}
td.key a{text-decoration:none}
tr.pick{position:relative}
tr.pick:hover td{background-color:#f5f8fe}
tr.pick:hover td.key{text-decoration:underline}
tr.pick td.key a::after{content:"";position:absolute;inset:0}
td.muted{color:#8a94a6}
.empty{color:#8a94a6;padding:8px 0;margin:0}
p.note{color:#667085;font-size:12px;margin:8px 0 0}
.note-filters{color:#8a94a6;font-size:12px;margin:-6px 0 8px}
footer{padding:4px 28px 24px;color:#8a94a6;font-size:12px;max-width:1560px}
footer p{margin:4px 0}
.login{max-width:360px;margin:12vh auto;background:#fff;border:1px solid #e3e7ee;
  border-radius:10px;padding:26px}
.login input{width:100%;font:inherit;padding:8px 10px;margin:10px 0 14px;border:1px solid #cfd5df;
  border-radius:6px}
.error{color:#b42318}
@media (max-width:1100px){
  main{grid-template-columns:repeat(2,1fr)}
  .card,.card.half{grid-column:1/-1}
  .kpis{grid-template-columns:repeat(4,1fr)}
}
"""


def document(title: str, body: str, script: str = "") -> str:
    """A whole page; `script`, a same-origin script's path, is the only script it may load."""
    tag = f'<script src="{escape(script)}" defer></script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style>{tag}</head>"
        f"<body>{body}</body></html>"
    )


def login_page(error: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return document(
        "Beacon dashboard: sign in",
        '<form class="login" method="post" action="/dashboard/login"><h1>Beacon</h1>'
        f"{message}<label for=token>Dashboard token</label>"
        "<input id=token name=token type=password autocomplete=current-password required autofocus>"
        "<button type=submit>Sign in</button></form>",
    )
