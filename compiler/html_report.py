"""The inspection page: one self-contained HTML file drawn from a :class:`Report`.

Everything is inline (CSS, JavaScript, SVG drawn by the page's script from the
report's JSON embedded in the page); nothing is fetched, so the file opens
offline. The page shows the summary, the op graph with nodes colored by coupling
group (module blocks such as ``layer1.0`` collapsed; click to expand), frozen ops,
per-layer channel counts before/after, a bar chart of the fraction removed per
layer, and per-group saliency histograms. Given a second report (a pruned model
of the same architecture) it compares per-layer channels with it.

The page's script marks ``<body data-ok="1">`` and ``#status[data-ok="1"]`` only
after everything rendered; a script error is shown in ``#errors`` and leaves
``data-ok="0"``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from compiler.atomic import check_writable, write_atomic  # re-exported: part of this module's API
from frontends.errors import InvalidArgumentError

if TYPE_CHECKING:
    from compiler.report import LayerReport, Report

log = logging.getLogger(__name__)

__all__ = ["render_html", "write_html", "compare_reports", "match_layers", "write_atomic", "check_writable"]


# -- comparing a report with the report of a pruned model ------------------------------------------


def _module_path(name: str) -> str:
    """``/layer1/layer1.0/downsample/downsample.0/Conv`` (ONNX exporters) -> ``layer1.0.downsample.0``."""
    if "/" not in name:
        return name
    parts = [p for p in name.split("/") if p][:-1]  # the last part is the op type
    segs: list[str] = []
    prev = None
    for p in parts:
        if prev is not None and p.startswith(prev + "."):
            segs.extend(p[len(prev) + 1 :].split("."))
        else:
            segs.extend(p.split("."))
        prev = p
    return ".".join(segs)


def match_layers(a: Sequence[LayerReport], b: Sequence[LayerReport]) -> tuple[list[int | None], str]:
    """Index into ``b`` of each layer of ``a``: by name, by module path, else by order when the counts agree."""
    best: tuple[list[int | None], str] = ([None] * len(a), "none")
    for how, key in (("name", lambda n: n), ("module path", _module_path)):
        index: dict[str, int] = {}
        for j, lr in enumerate(b):
            index.setdefault(key(lr.name), j)
        found = [index.get(key(lr.name)) for lr in a]
        hits = sum(x is not None for x in found)
        if hits == len(a) and len(set(found)) == len(a):
            return found, how
        if hits > sum(x is not None for x in best[0]):
            best = (found, how)
    if len(a) == len(b) and all(x.kind == y.kind for x, y in zip(a, b, strict=True)):
        return list(range(len(a))), "order"
    return best


def compare_reports(base: Report, other: Report, other_name: str | None = None) -> dict[str, Any]:
    """Per-layer channels of ``other`` (its model as it is: the 'before' side of its report) next to ``base``'s."""
    found, how = match_layers(base.layers, other.layers)
    layers: list[dict[str, Any] | None] = []
    for j in found:
        if j is None:
            layers.append(None)
            continue
        lr = other.layers[j]
        layers.append(
            {
                "name": lr.name,
                "in_channels": lr.in_channels[0],
                "out_channels": lr.out_channels[0],
                "params": lr.params[0],
                "macs": lr.macs[0],
            }
        )
    return {
        "model": other_name or other.model,
        "matched_by": how,
        "matched": sum(x is not None for x in found),
        "unmatched": [other.layers[j].name for j in range(len(other.layers)) if j not in set(found)],
        "params": other.params_before,
        "macs": other.macs_before,
        "layers": layers,
    }


# -- the page ---------------------------------------------------------------------------------------


def _json_for_script(data: Any) -> str:
    """JSON safe inside <script>: no '<', '>', '&' or line separators left raw."""
    text = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _clean(obj: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def render_html(
    report: Report | dict[str, Any], compare: dict[str, Any] | None = None, title: str | None = None
) -> str:
    """The page as a string. ``report`` is a Report or its ``to_dict()``; ``compare`` is :func:`compare_reports`'s."""
    data = report if isinstance(report, dict) else report.to_dict()
    payload = _clean({"report": data, "compare": compare})
    name = title or f"prunec inspect: {data.get('model', 'model')}"
    return (
        _PAGE.replace("%%TITLE%%", html.escape(name))
        .replace("%%CSS%%", _CSS)
        .replace("%%DATA%%", _json_for_script(payload))
        .replace("%%GUARD%%", _GUARD_JS)
        .replace("%%JS%%", _JS)
    )


def write_html(
    report: Report | dict[str, Any],
    path: str | os.PathLike[str],
    compare: Report | dict[str, Any] | None = None,
    compare_name: str | None = None,
) -> None:
    """Render the page and write it atomically (a temporary file, then ``os.replace``)."""
    check_writable(path)
    if compare is not None and not isinstance(compare, dict):
        if isinstance(report, dict):
            raise InvalidArgumentError("compare= a Report needs report= a Report too")
        compare = compare_reports(report, compare, compare_name)
    write_atomic({os.fspath(path): render_html(report, compare)})


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
<script>%%GUARD%%</script>
</head>
<body data-ok="0">
<header><h1 id="title">prunec inspect</h1><div id="subtitle"></div></header>
<div id="errors" role="alert" hidden></div>
<div id="status" data-ok="0">rendering&hellip; (this page needs JavaScript)</div>
<section id="sec-summary"><div id="cards" class="cards"></div></section>
<section id="sec-graph"><h2>Graph</h2>
<p class="hint">Nodes are ops, colored by coupling group (channels pruned together). Module blocks are collapsed:
click a block (&#9656;) to open it, a block's title bar (&#9662;) to close it, an op for its details.
Gray: channels frozen. Red dashed: an op the registry does not know; it froze the channels it touches.
Side computations that touch no channel (causal masks, position ids) are folded away. Zoom: the buttons,
Ctrl + wheel, or + / &minus; / 0 on the graph.</p>
<div class="controls"><button id="btn-expand-all" type="button">Expand all</button>
<button id="btn-collapse-all" type="button">Collapse all</button>
<button id="btn-default" type="button">Default view</button>
<button id="btn-side" type="button" hidden></button>
<span class="zoom"><button id="btn-zoom-out" type="button" title="zoom out (-)">&minus;</button><button id="btn-zoom-fit" type="button" title="fit to the panel (0)">Fit</button><button id="btn-zoom-in" type="button" title="zoom in (+)">+</button> <span id="zoom-level"></span></span>
<span id="graph-info"></span></div>
<div class="graph-wrap"><div id="graph" tabindex="0"></div><aside id="details"><em>Click an op or a group.</em></aside></div>
</section>
<section id="sec-removed"><h2>Removed per layer</h2>
<div class="controls">metric <select id="metric"><option value="params">parameters</option>
<option value="out">output channels</option><option value="macs">MACs</option></select> <span id="bars-note"></span></div>
<div id="bars" class="scroll-x"></div></section>
<section id="sec-groups"><h2>Coupling groups</h2><div id="groups" class="scroll-x"></div><div id="reasons"></div></section>
<section id="sec-layers"><h2>Layers</h2><div id="layers" class="scroll-x"></div></section>
<section id="sec-frozen"><h2>Ops that froze channels</h2><div id="frozen"></div></section>
<section id="sec-settings"><h2>Settings</h2><div id="settings"></div></section>
<script type="application/json" id="prunec-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d5d9e0;--bg:#fff;--bg2:#f5f7fa;--bad:#c62828;--cut:#e45756}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1500px;padding:16px 24px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
#subtitle,.hint,#graph-info,#bars-note{color:var(--muted)}.hint{margin:4px 0 8px;max-width:1100px}
#errors{background:#fdecea;color:var(--bad);border:1px solid var(--bad);padding:8px 12px;margin:8px 0;white-space:pre-wrap;font-family:monospace}
#status{font-size:12px;color:var(--muted);margin:4px 0}#status[data-ok="1"]{display:none}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:var(--bg2);border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:150px}
.card .k{font-size:12px;color:var(--muted)}.card .v{font-size:17px;font-weight:600;max-width:260px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.card .s{font-size:12px;color:var(--muted)}
.card.bad .v{color:var(--bad)}
.controls{margin:6px 0;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
button,select{font:inherit;padding:3px 10px;border:1px solid var(--line);border-radius:4px;background:var(--bg2);cursor:pointer}
button:hover{background:#e8ecf2}
.graph-wrap{display:flex;gap:12px;align-items:flex-start}
#graph{flex:1;overflow:auto;max-height:82vh;border:1px solid var(--line);border-radius:6px;background:#fcfcfd}
#details{width:300px;flex:none;font-size:13px;border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:var(--bg2);max-height:82vh;overflow:auto;word-break:break-word}
#details h3{margin:0 0 6px;font-size:14px}#details table td{padding:1px 6px 1px 0;vertical-align:top}#details table td:first-child{white-space:nowrap;color:var(--muted)}
svg text{font-family:inherit}
.op rect.box,.blk rect.box{stroke:#6b7385;stroke-width:1}
.op{cursor:pointer}.blk{cursor:pointer}
.op.unknown rect.box,.blk.unknown rect.box{stroke:var(--bad);stroke-width:2;stroke-dasharray:5 3}
.op.side rect.box{stroke:#a8b0c0;stroke-dasharray:2 2}.op.side text{fill:#5b6475}
.zoom button{padding:3px 8px;min-width:30px}.zoom button+button{margin-left:2px}#zoom-level{color:var(--muted);font-size:12px}
#graph:focus{outline:2px solid #8fb3e8}
.blk rect.box{stroke-width:1.5}.blk rect.inner{fill:none;stroke:#6b7385;stroke-width:.8}
.hl rect.box{stroke:#000;stroke-width:3}
.frame rect{fill:rgba(90,110,150,.05);stroke:#a8b0c0;stroke-dasharray:3 3}
.frame .head{cursor:pointer}.frame .head rect{fill:rgba(90,110,150,.12);stroke:none}
.frame .head:hover rect{fill:rgba(90,110,150,.25)}
.edge{fill:none;stroke:#8c94a6;stroke-width:1.2}.edge.fan{stroke-opacity:.3}
.t1{font-size:12px;font-weight:600}.t2{font-size:11px;fill:#3a4150}
table.data{border-collapse:collapse;font-size:13px}
table.data th,table.data td{border-bottom:1px solid var(--line);padding:3px 8px;text-align:left;white-space:nowrap;vertical-align:middle}
table.data th{background:var(--bg2);position:sticky;top:0}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data tr.group-row{cursor:pointer}table.data tr.group-row:hover,table.data tr.sel{background:#eef3fb}
td.members{max-width:280px;overflow:hidden;text-overflow:ellipsis}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;border:1px solid #6b7385;vertical-align:-2px;margin-right:4px}
.diff{color:var(--bad);font-weight:600}.same{color:#2e7d32}
.scroll-x{overflow-x:auto}#layers{max-height:70vh;overflow:auto}
#reasons ol{margin:6px 0;padding-left:24px;font-size:13px}
.legend{font-size:12px;color:var(--muted)}
"""

_GUARD_JS = """
(function(){
  function show(msg){
    var box=document.getElementById("errors");
    if(!box){document.addEventListener("DOMContentLoaded",function(){show(msg);});return;}
    box.hidden=false;var d=document.createElement("div");d.textContent=msg;box.appendChild(d);
    var st=document.getElementById("status");if(st){st.setAttribute("data-ok","0");st.textContent="error: see above";}
    if(document.body){document.body.setAttribute("data-ok","0");}
    window.__prunecErrors=(window.__prunecErrors||0)+1;
  }
  window.__prunecFail=show;
  window.onerror=function(msg,src,line,col){show("script error: "+msg+" (line "+line+":"+col+")");};
  window.addEventListener("unhandledrejection",function(e){show("script error: "+(e.reason&&e.reason.message||e.reason));});
})();
"""

_JS = r"""
(function(){
"use strict";
var SVGNS="http://www.w3.org/2000/svg";
var D=JSON.parse(document.getElementById("prunec-data").textContent);
var R=D.report, C=D.compare;
var G=R.graph||{nodes:[],edges:[],blocks:[]};
var GROUPS={};R.groups.forEach(function(g){GROUPS[g.id]=g;});

function el(tag,attrs,text){var e=document.createElement(tag);if(attrs){for(var k in attrs){e.setAttribute(k,attrs[k]);}}if(text!==undefined&&text!==null){e.textContent=String(text);}return e;}
function sv(tag,attrs,text){var e=document.createElementNS(SVGNS,tag);if(attrs){for(var k in attrs){e.setAttribute(k,attrs[k]);}}if(text!==undefined&&text!==null){e.textContent=String(text);}return e;}
function h(n){if(n===null||n===undefined)return"-";var a=Math.abs(n);if(a>=1e9)return(n/1e9).toFixed(2)+"G";if(a>=1e6)return(n/1e6).toFixed(2)+"M";if(a>=1e3)return(n/1e3).toFixed(2)+"k";return String(Math.round(n));}
function arrow(b,a){return b===a?String(b):b+"\u2192"+a;}
function pct(x){return (100*x).toFixed(1)+"%";}
function frac(b,a){return b>0?1-a/b:0;}
function clip(s,n){s=String(s);return s.length>n?"\u2026"+s.slice(s.length-n+1):s;}
function cut(s,n){s=String(s);return s.length>n?s.slice(0,n-1)+"\u2026":s;}
// group hues run from amber (40) to violet (310) by the golden ratio: never red, salmon or pink, the warning colour's
function groupHue(id){return (40+((id*0.6180339887)%1)*270).toFixed(1);}
function groupColor(id){var g=GROUPS[id];if(!g)return"#ffffff";if(g.frozen)return"#cfd3da";return"hsl("+groupHue(id)+",62%,76%)";}
function groupStroke(id){var g=GROUPS[id];if(!g||g.frozen)return"#8a8f99";return"hsl("+groupHue(id)+",55%,40%)";}
function swatch(id){var s=el("span",{"class":"sw"});s.style.background=groupColor(id);s.title="group "+id;return s;}

// ---------------------------------------------------------------- summary
(function summary(){
  document.getElementById("title").textContent="prunec inspect \u2014 "+R.model;
  document.getElementById("subtitle").textContent=R.framework+", traced by "+R.trace_method+"; importance "+(R.settings.importance||"?")+", equalization "+(R.settings.equalization||"?")+(R.settings.ratio_used!==undefined&&R.settings.ratio_used!==null?", ratio "+R.settings.ratio_used:"");
  var cards=document.getElementById("cards");
  function card(k,v,s,bad){var c=el("div",{"class":"card"+(bad?" bad":"")});c.appendChild(el("div",{"class":"k"},k));c.appendChild(el("div",{"class":"v",title:v},v));if(s)c.appendChild(el("div",{"class":"s"},s));cards.appendChild(c);}
  var nPruned=R.groups.filter(function(g){return g.channels_after<g.channels_before;}).length;
  var nFrozen=R.groups.filter(function(g){return g.frozen;}).length;
  card("parameters",h(R.params_before)+" \u2192 "+h(R.params_after),R.params_ratio.toFixed(3)+"\u00d7");
  card("MACs",h(R.macs_before)+" \u2192 "+h(R.macs_after),R.macs_ratio.toFixed(3)+"\u00d7");
  card("coupling groups",String(R.groups.length),nPruned+" pruned, "+nFrozen+" frozen");
  card("layers",String(R.layers.length),G.nodes.length+" ops in the graph");
  var free=R.channel_free_ops||[];
  card("unknown ops",String(R.frozen_ops.length),R.frozen_ops.length?"froze their channels":(free.length?"none froze a channel ("+free.length+" touched none)":"none"),R.frozen_ops.length>0);
  if(R.verification){var v=R.verification;card("verified",v.passed?"passed":"FAILED","max abs error "+Number(v.max_abs_error).toExponential(2),!v.passed);}
  else card("verified","no","verify=False");
  if(C){card("compared with",C.model,C.matched+"/"+R.layers.length+" layers matched by "+C.matched_by);
        card("its parameters",h(C.params),(R.params_before?(C.params/R.params_before).toFixed(3):"-")+"\u00d7 of the original");}
})();

// ---------------------------------------------------------------- graph model
// Side ops (no channel on any value, computed from model inputs and constants only: causal masks,
// position ids) are folded out of the picture unless showSide; blocks left empty vanish with them.
var N=G.nodes.length, NSIDE=G.nodes.filter(function(n){return n.side;}).length, showSide=false;
var kids, firstOp, opsIn, eff, par, depth, chain, shownEdges;
function vis(i){return showSide||!G.nodes[i].side;}
function pkey(b){return (b===null||b===undefined)?"root":"b"+b;}
function resolve(k){if(k[0]==="b"){var c=kids[k];if(c.length===0)return null;if(c.length===1)return resolve(c[0]);}return k;}
function fo(k){return k[0]==="n"?+k.slice(1):firstOp[k];}
function build(k){
  var out=[];kids[k].forEach(function(c){var r=resolve(c);if(r!==null)out.push(r);});
  eff[k]=out;var ops=[];
  out.forEach(function(c){par[c]=k;depth[c]=depth[k]+1;if(c[0]==="b"){build(c);ops=ops.concat(opsIn[c]);}else ops.push(+c.slice(1));});
  opsIn[k]=ops;var m=1e18;for(var q=0;q<ops.length;q++){if(ops[q]<m)m=ops[q];}firstOp[k]=m;
}
function buildModel(){
  kids={root:[]};firstOp={};opsIn={};eff={};par={};depth={root:0};chain=[];
  G.blocks.forEach(function(b,j){kids["b"+j]=[];});
  G.blocks.forEach(function(b,j){kids[pkey(b.parent)].push("b"+j);});
  G.nodes.forEach(function(n,i){if(vis(i))kids[pkey(n.block)].push("n"+i);});
  build("root");
  Object.keys(eff).forEach(function(k){eff[k].sort(function(a,b){return fo(a)-fo(b);});});
  for(var i=0;i<N;i++){  // per visible node: items from the root's child down to the node
    if(!vis(i)){chain.push(null);continue;}
    var c=[],k="n"+i;while(k!=="root"&&k!==undefined){c.unshift(k);k=par[k];}chain.push(c);
  }
  shownEdges=G.edges.filter(function(e){return chain[e[0]]&&chain[e[1]];});
}
buildModel();
function blockName(k){return G.blocks[+k.slice(1)].name;}
function blockType(k){return G.blocks[+k.slice(1)].type||"";}
function blockGroups(k){var s={};opsIn[k].forEach(function(i){G.nodes[i].groups.forEach(function(g){s[g]=1;});});return Object.keys(s).map(Number).sort(function(a,b){return a-b;});}
function blockUnknown(k){return opsIn[k].filter(function(i){return G.nodes[i].unknown;}).length;}
function blockOut(k){var ops=opsIn[k],last=ops[0];for(var q=1;q<ops.length;q++){if(ops[q]>last)last=ops[q];}return G.nodes[last];}
function shortName(i){var n=G.nodes[i], p=par["n"+i];if(p&&p!=="root"){var b=blockName(p);if(n.name.indexOf(b)===0&&n.name.length>b.length){var s=n.name.slice(b.length).replace(/^[.\/]+/,"");if(s)return s;}}return n.name;}
function visibleEdges(){return shownEdges;}

var expanded={};
function setDefault(){
  // open whole levels of blocks while the picture stays small (or is still too bare to be useful)
  expanded={};var budget=32, count=eff.root.length, level=eff.root.filter(function(k){return k[0]==="b";});
  while(level.length){
    var add=0;level.forEach(function(b){add+=eff[b].length-1;});
    if(count+add>budget&&count>=8)break;
    var next=[];level.forEach(function(b){expanded[b]=true;eff[b].forEach(function(c){if(c[0]==="b")next.push(c);});});
    count+=add;level=next;
  }
}
function repOf(i){var c=chain[i];if(!c)return null;for(var d=0;d<c.length;d++){if(c[d][0]==="b"&&!expanded[c[d]])return c[d];}return "n"+i;}
var highlight=null;

// ---------------------------------------------------------------- graph layout and drawing
// A box's items are laid out in rows by dependency rank; a box taller than the panel wraps its rows
// into side-by-side columns, as many as make it about as wide as it is tall in the panel's proportions.
var W=228,H=40,BH=46,GX=22,GY=26,CG=44,PAD=10,HEAD=22,M=16, PANEL={w:900,h:700};
var zoom=1, autoFit=true, lastBox=null, GAPS=[];  // GAPS: x of every gap between wrapped columns
function svText(attrs,full,shown){var t=sv("text",attrs,shown);if(shown!==full)t.appendChild(sv("title",null,full));return t;}
function layoutBox(k){
  var items=eff[k], size={}, pos={};
  items.forEach(function(c){
    if(c[0]==="b"&&expanded[c]){var sub=layoutBox(c);size[c]={w:sub.w+2*PAD,h:sub.h+PAD+HEAD,sub:sub};}
    else size[c]={w:W,h:c[0]==="b"?BH:H};
  });
  var idx={};items.forEach(function(c,j){idx[c]=j;});
  var d=depth[k]===undefined?0:depth[k];
  var preds=items.map(function(){return [];}), seen={};
  visibleEdges().forEach(function(e){
    var cu=chain[e[0]], cv=chain[e[1]];
    var u=(k==="root"||cu[d-1]===k)?cu[d]:undefined, v=(k==="root"||cv[d-1]===k)?cv[d]:undefined;
    if(u===undefined||v===undefined||u===v)return;
    var iu=idx[u], iv=idx[v];if(iu===undefined||iv===undefined||iu>=iv)return;
    var key=iu+","+iv;if(seen[key])return;seen[key]=1;preds[iv].push(iu);
  });
  var rank=items.map(function(){return 0;});
  for(var j=0;j<items.length;j++){preds[j].forEach(function(p){if(rank[p]+1>rank[j])rank[j]=rank[p]+1;});}
  var rows=[];items.forEach(function(c,j){(rows[rank[j]]=rows[rank[j]]||[]).push(j);});
  var cx={}, rowsOut=[];
  rows.forEach(function(row){
    if(!row)return;
    row.sort(function(a,b){var ba=bary(a),bb=bary(b);return ba===bb?a-b:ba-bb;});
    function bary(j){if(!preds[j].length)return j*1e-6;var s=0;preds[j].forEach(function(p){s+=cx[p];});return s/preds[j].length;}
    var rw=0,rh=0;row.forEach(function(j){rw+=size[items[j]].w;rh=Math.max(rh,size[items[j]].h);});rw+=GX*(row.length-1);
    rowsOut.push({row:row,w:rw,h:rh});
    var x=-rw/2;row.forEach(function(j){cx[j]=x+size[items[j]].w/2;x+=size[items[j]].w+GX;});
  });
  var cols=wrapRows(rowsOut), width=0, height=0, gaps=[];
  cols.forEach(function(col){
    if(width>0)gaps.push(width-CG/2);
    var y=0;col.rows.forEach(function(r){
      var x=width+(col.w-r.w)/2;
      r.row.forEach(function(j){var c=items[j];pos[c]={x:x,y:y,w:size[c].w,h:size[c].h,sub:size[c].sub,col:cols.indexOf(col)};x+=size[c].w+GX;});
      y+=r.h+GY;
    });
    height=Math.max(height,y-GY);width+=col.w+CG;
  });
  return {w:Math.max(width-CG,W),h:Math.max(height,H),pos:pos,items:items,cols:cols.length,gaps:gaps};
}
function wrapRows(rows){
  var total=0,tallest=0,widest=W;rows.forEach(function(r){total+=r.h+GY;tallest=Math.max(tallest,r.h);widest=Math.max(widest,r.w);});total-=GY;
  var limit=Infinity;
  if(total>PANEL.h&&rows.length>1){var n=Math.max(1,Math.round(Math.sqrt(total*PANEL.w/PANEL.h/(widest+CG))));limit=Math.max(tallest,Math.min(PANEL.h,total/n));}
  var cols=[],cur=null;
  rows.forEach(function(r){
    if(!cur||(cur.rows.length&&cur.h+GY+r.h>limit*1.08)){cur={rows:[],h:-GY,w:0};cols.push(cur);}
    cur.rows.push(r);cur.h+=GY+r.h;cur.w=Math.max(cur.w,r.w);
  });
  return cols.length?cols:[{rows:[],h:0,w:W}];
}
function place(box,ox,oy,out,frames,dep){
  box.gaps.forEach(function(g){GAPS.push(ox+g);});
  box.items.forEach(function(c){
    var p=box.pos[c], ax=ox+p.x, ay=oy+p.y;
    if(p.sub){frames.push({k:c,x:ax,y:ay,w:p.w,h:p.h,d:dep});place(p.sub,ax+PAD,ay+HEAD,out,frames,dep+1);}
    else out[c]={x:ax,y:ay,w:p.w,h:p.h};
  });
}
function nodeLines(i){
  var n=G.nodes[i], ch=n.channels?arrow(n.channels[0],n.channels[1]):(n.shape?"["+n.shape.join(",")+"]":"");
  if(C&&n.layer!==null&&n.layer!==undefined&&C.layers[n.layer])ch+=" | "+C.layers[n.layer].out_channels;
  var a=(n.unknown?"\u2716 ":"")+shortName(i), b=(n.target||n.kind)+(ch?" \u00b7 "+ch:"");
  return [[a,(n.unknown?"\u2716 ":"")+clip(shortName(i),28)],[b,cut(cut(n.target||n.kind,18)+(ch?" \u00b7 "+ch:""),34)]];
}
function stripes(g,x,y,hh,groups){var k=Math.min(groups.length,8);for(var s=0;s<k;s++){g.appendChild(sv("rect",{x:x+2+s*5,y:y+2,width:4,height:hh-4,fill:groupStroke(groups[s])}));}return k;}
function edgePath(a,b){
  var x1=a.x+a.w/2,y1=a.y+a.h,x2=b.x+b.w/2,y2=b.y;
  if(y2-y1>1.5*(H+GY)&&Math.abs(x2-x1)<W){var k=W*0.8;return "M"+x1+","+y1+" C"+(x1+k)+","+(y1+(y2-y1)/3)+" "+(x2+k)+","+(y2-(y2-y1)/3)+" "+x2+","+y2;}
  if(y2<=y1&&b.x>a.x+a.w){  // into a later column: down, along the gap between the columns, up, and in from above
    var gx=(a.x+a.w+b.x)/2, ya=y1+10, yb=y2-10, r=5;
    GAPS.forEach(function(g){if(g>a.x+a.w&&g<b.x&&(gx===(a.x+a.w+b.x)/2||g>gx))gx=g;});  // the gap just left of b's column
    return "M"+x1+","+y1+" L"+x1+","+(ya-r)+" Q"+x1+","+ya+" "+(x1+r)+","+ya+" L"+(gx-r)+","+ya+" Q"+gx+","+ya+" "+gx+","+(ya-r)+
      " L"+gx+","+(yb+r)+" Q"+gx+","+yb+" "+(gx+r)+","+yb+" L"+(x2-r)+","+yb+" Q"+x2+","+yb+" "+x2+","+(yb+r)+" L"+x2+","+y2;
  }
  if(y2<=y1){return "M"+x1+","+y1+" C"+(x1+W)+","+(y1+40)+" "+(x2+W)+","+(y2-40)+" "+x2+","+y2;}
  var my=(y1+y2)/2;return "M"+x1+","+y1+" C"+x1+","+my+" "+x2+","+my+" "+x2+","+y2;
}
function drawGraph(){
  var host=document.getElementById("graph");
  PANEL={w:Math.max(320,host.clientWidth-18),h:Math.max(320,Math.round(window.innerHeight*0.78))};
  while(host.firstChild)host.removeChild(host.firstChild);
  GAPS=[];var box=layoutBox("root"), at={}, frames=[];place(box,0,0,at,frames,0);lastBox=box;
  var svg=sv("svg",{viewBox:(-M)+" "+(-M)+" "+(box.w+2*M)+" "+(box.h+2*M),id:"graph-svg"});
  var defs=sv("defs");var mk=sv("marker",{id:"arr",viewBox:"0 0 10 10",refX:"9",refY:"5",markerWidth:"7",markerHeight:"7",orient:"auto-start-reverse"});
  mk.appendChild(sv("path",{d:"M0,0 L10,5 L0,10 z",fill:"#8c94a6"}));defs.appendChild(mk);svg.appendChild(defs);
  var gFrames=sv("g"),gEdges=sv("g"),gNodes=sv("g");svg.appendChild(gFrames);svg.appendChild(gEdges);svg.appendChild(gNodes);
  frames.forEach(function(f){
    var g=sv("g",{"class":"frame","data-block":blockName(f.k)});
    g.appendChild(sv("rect",{x:f.x,y:f.y,width:f.w,height:f.h,rx:6}));
    var head=sv("g",{"class":"head"});head.appendChild(sv("rect",{x:f.x,y:f.y,width:f.w,height:HEAD-4,rx:6}));
    var t=blockType(f.k),room=Math.max(8,Math.floor((f.w-24)/6.2)-(t?t.length+4:0));
    head.appendChild(svText({x:f.x+8,y:f.y+13,"class":"t2"},"\u25be "+blockName(f.k)+(t?"  \u00b7 "+t:""),"\u25be "+clip(blockName(f.k),room)+(t?"  \u00b7 "+t:"")));
    head.appendChild(sv("title",null,"close "+blockName(f.k)));
    head.addEventListener("click",function(){delete expanded[f.k];Object.keys(expanded).forEach(function(k){if(isInside(k,f.k))delete expanded[k];});drawGraph();});
    g.appendChild(head);gFrames.appendChild(g);
  });
  var seen={},drawn=[],fan={};
  visibleEdges().forEach(function(e){
    var u=repOf(e[0]),v=repOf(e[1]);if(u===v)return;var key=u+">"+v;if(seen[key])return;seen[key]=1;
    if(!at[u]||!at[v])return;drawn.push([u,v]);fan[u]=(fan[u]||0)+1;
  });
  drawn.forEach(function(e){  // a value read by many (positions, a mask) is drawn faint: it would hide the rest
    gEdges.appendChild(sv("path",{d:edgePath(at[e[0]],at[e[1]]),"class":"edge"+(fan[e[0]]>4?" fan":""),"marker-end":"url(#arr)"}));
  });
  var nEdges=drawn.length;
  var nOps=0,nBlocks=0;
  Object.keys(at).sort(function(a,b){return fo(a)-fo(b);}).forEach(function(k){
    var p=at[k],g;
    if(k[0]==="n"){
      var i=+k.slice(1),n=G.nodes[i];nOps++;
      g=sv("g",{"class":"op"+(n.unknown?" unknown":"")+(n.frozen?" frozen":"")+(n.side?" side":"")+(highlight!==null&&n.groups.indexOf(highlight)>=0?" hl":""),"data-node":String(i)});
      g.appendChild(sv("rect",{"class":"box",x:p.x,y:p.y,width:p.w,height:p.h,rx:4,fill:n.groups.length?groupColor(n.groups[0]):"#ffffff"}));
      var off=n.groups.length>1?stripes(g,p.x,p.y,p.h,n.groups)*5:0;
      var L=nodeLines(i);g.appendChild(svText({x:p.x+8+off,y:p.y+16,"class":"t1"},L[0][0],L[0][1]));g.appendChild(svText({x:p.x+8+off,y:p.y+31,"class":"t2"},L[1][0],L[1][1]));
      g.appendChild(sv("title",null,n.name+"\n"+n.target+" ("+n.kind+")"+(n.groups.length?"\ngroups "+n.groups.join(", "):"")+(n.frozen?"\nchannels frozen":"")+(n.side?"\nside computation: touches no channel":"")));
      g.addEventListener("click",function(){showNode(i);});
    }else{
      nBlocks++;var gs=blockGroups(k),unk=blockUnknown(k),last=blockOut(k);
      g=sv("g",{"class":"blk"+(unk?" unknown":"")+(highlight!==null&&gs.indexOf(highlight)>=0?" hl":""),"data-block":blockName(k)});
      g.appendChild(sv("rect",{"class":"box",x:p.x,y:p.y,width:p.w,height:p.h,rx:7,fill:"#ffffff"}));
      g.appendChild(sv("rect",{"class":"inner",x:p.x+3,y:p.y+3,width:p.w-6,height:p.h-6,rx:5}));
      var off2=stripes(g,p.x+2,p.y+2,p.h-4,gs)*5;
      var room=Math.floor((p.w-16-off2)/6.0);
      g.appendChild(svText({x:p.x+10+off2,y:p.y+18,"class":"t1"},"\u25b8 "+blockName(k),"\u25b8 "+clip(blockName(k),room-3)));
      var ch=last.channels?arrow(last.channels[0],last.channels[1]):"";
      var sub=(blockType(k)?blockType(k)+" \u00b7 ":"")+opsIn[k].length+" ops"+(ch?" \u00b7 "+ch:"")+(unk?" \u00b7 \u2716"+unk:"");
      g.appendChild(svText({x:p.x+10+off2,y:p.y+34,"class":"t2"},sub,cut(sub,room)));
      g.appendChild(sv("title",null,"open "+blockName(k)+" ("+opsIn[k].length+" ops; groups "+gs.join(", ")+")"));
      g.addEventListener("click",function(){expanded[k]=true;drawGraph();});
    }
    gNodes.appendChild(g);
  });
  host.appendChild(svg);
  applyZoom(null);
  var side=NSIDE?(showSide?"; "+NSIDE+" side ops shown":"; "+NSIDE+" side ops (masks, positions) folded away"):"";
  document.getElementById("graph-info").textContent=nOps+" ops and "+nBlocks+" closed blocks shown of "+N+" ops, "+nEdges+" edges"+side;
}
function fitZoom(){  // the panel's width; larger than 100% only while the whole picture still fits its height
  if(!lastBox)return 1;var zw=PANEL.w/(lastBox.w+2*M), zh=PANEL.h/(lastBox.h+2*M);
  return Math.max(0.4,Math.min(zw,zh>=1?Math.min(zh,1.25):1));
}
function applyZoom(anchor){
  var svg=document.getElementById("graph-svg");if(!svg||!lastBox)return;
  var old=parseFloat(svg.getAttribute("data-zoom")||"0")||zoom;
  if(autoFit)zoom=fitZoom();
  svg.setAttribute("width",((lastBox.w+2*M)*zoom).toFixed(1));svg.setAttribute("height",((lastBox.h+2*M)*zoom).toFixed(1));
  svg.setAttribute("data-zoom",String(zoom));
  if(anchor){var host=document.getElementById("graph");host.scrollLeft=anchor.px*zoom/old-anchor.cx;host.scrollTop=anchor.py*zoom/old-anchor.cy;}
  document.getElementById("zoom-level").textContent=Math.round(zoom*100)+"%"+(autoFit?" (fit)":"");
}
function setZoom(z,anchor){zoom=Math.max(0.15,Math.min(4,z));autoFit=false;applyZoom(anchor);}
function isInside(k,outer){var p=par[k];while(p&&p!=="root"){if(p===outer)return true;p=par[p];}return false;}
function showNode(i){
  var n=G.nodes[i],box=document.getElementById("details");while(box.firstChild)box.removeChild(box.firstChild);
  box.appendChild(el("h3",null,n.name));var t=el("table");box.appendChild(t);
  function row(k,v){var tr=el("tr");tr.appendChild(el("td",null,k));var td=el("td");if(v instanceof Node)td.appendChild(v);else td.textContent=v;tr.appendChild(td);t.appendChild(tr);}
  row("op",n.target+" ("+n.kind+")");
  if(n.channels)row("channels",arrow(n.channels[0],n.channels[1]));
  if(n.shape)row("shape","["+n.shape.join(", ")+"]");
  if(n.groups.length){var s=el("span");n.groups.forEach(function(g){var a=el("a",{href:"#group-"+g});a.appendChild(swatch(g));a.appendChild(document.createTextNode(String(g)+" "));s.appendChild(a);});row("groups",s);}
  if(n.unknown)row("frozen","op not in the registry: froze the channels it touches");
  else if(n.kind==="unknown")row("registry","op not in the registry; its inputs carry no channel, so it froze nothing");
  else if(n.frozen)row("frozen","its channels are frozen: "+n.groups.map(function(g){return (GROUPS[g].reasons||[]).slice(0,2).join("; ");}).join("; "));
  if(n.side)row("side","a side computation (mask, positions): no channel on its inputs or outputs");
  if(n.layer!==null&&n.layer!==undefined){var L=R.layers[n.layer];
    row("in",arrow(L.in_channels[0],L.in_channels[1]));row("out",arrow(L.out_channels[0],L.out_channels[1]));
    row("params",h(L.params[0])+" \u2192 "+h(L.params[1]));row("MACs",h(L.macs[0])+" \u2192 "+h(L.macs[1]));
    if(C&&C.layers[n.layer]){var P=C.layers[n.layer];row("pruned model","in "+P.in_channels+", out "+P.out_channels+", params "+h(P.params));}}
  if(n.groups.length===1)setHighlight(n.groups[0],false);
}
function setHighlight(g,scroll){
  highlight=(highlight===g&&scroll)?null:g;
  Array.prototype.forEach.call(document.querySelectorAll("tr.group-row"),function(tr){tr.classList.toggle("sel",+tr.getAttribute("data-group")===highlight);});
  drawGraph();
  if(scroll&&highlight!==null){var first=document.querySelector("#graph .hl");if(first&&first.scrollIntoView)first.scrollIntoView({block:"center",inline:"center"});}
}
function setSide(on){
  showSide=on;buildModel();
  Object.keys(expanded).forEach(function(k){if(!eff[k])delete expanded[k];});
  document.getElementById("btn-side").textContent=(showSide?"Fold":"Show")+" side computations ("+NSIDE+" ops)";
}
function toggleSide(){setSide(!showSide);drawGraph();}
document.getElementById("btn-expand-all").addEventListener("click",function(){Object.keys(eff).forEach(function(k){if(k[0]==="b")expanded[k]=true;});drawGraph();});
document.getElementById("btn-collapse-all").addEventListener("click",function(){expanded={};drawGraph();});
document.getElementById("btn-default").addEventListener("click",function(){if(showSide)setSide(false);setDefault();autoFit=true;drawGraph();});
document.getElementById("btn-zoom-in").addEventListener("click",function(){setZoom(zoom*1.25,null);});
document.getElementById("btn-zoom-out").addEventListener("click",function(){setZoom(zoom/1.25,null);});
document.getElementById("btn-zoom-fit").addEventListener("click",function(){autoFit=true;applyZoom(null);});
(function(){
  var sideBtn=document.getElementById("btn-side");
  if(NSIDE){sideBtn.hidden=false;sideBtn.textContent="Show side computations ("+NSIDE+" ops)";sideBtn.addEventListener("click",toggleSide);}
  var host=document.getElementById("graph");
  host.addEventListener("wheel",function(e){  // Ctrl/Cmd + wheel (a trackpad pinch) zooms about the pointer; a plain wheel scrolls
    if(!(e.ctrlKey||e.metaKey))return;e.preventDefault();
    var r=host.getBoundingClientRect(),cx=e.clientX-r.left,cy=e.clientY-r.top;
    setZoom(zoom*Math.exp(-e.deltaY*0.002),{px:cx+host.scrollLeft,py:cy+host.scrollTop,cx:cx,cy:cy});
  },{passive:false});
  host.addEventListener("keydown",function(e){
    if(e.key==="+"||e.key==="="){setZoom(zoom*1.25,null);e.preventDefault();}
    else if(e.key==="-"||e.key==="_"){setZoom(zoom/1.25,null);e.preventDefault();}
    else if(e.key==="0"){autoFit=true;applyZoom(null);e.preventDefault();}
  });
  var pending=null;window.addEventListener("resize",function(){if(pending)clearTimeout(pending);pending=setTimeout(function(){if(N)drawGraph();},150);});
})();
window.prunecGraph={expandAll:function(){document.getElementById("btn-expand-all").click();},collapseAll:function(){document.getElementById("btn-collapse-all").click();},reset:function(){document.getElementById("btn-default").click();},
  toggleSide:function(){if(NSIDE)toggleSide();},zoom:function(z){if(z===undefined)return zoom;setZoom(z,null);return zoom;},fit:function(){document.getElementById("btn-zoom-fit").click();return zoom;}};
setDefault();
if(N)drawGraph();else document.getElementById("graph").appendChild(el("p",{"class":"hint"},"This report has no graph view."));

// ---------------------------------------------------------------- removed per layer (bar chart)
function drawBars(){
  var host=document.getElementById("bars");while(host.firstChild)host.removeChild(host.firstChild);
  var metric=document.getElementById("metric").value, Ls=R.layers;
  function pair(L,P){if(metric==="params")return [L.params[0],P?P.params:L.params[1]];if(metric==="macs")return [L.macs[0],P?P.macs:L.macs[1]];return [L.out_channels[0],P?P.out_channels:L.out_channels[1]];}
  var series=[{name:"this plan",color:"#4c78a8",get:function(j){return pair(Ls[j],null);}}];
  if(C)series.push({name:"pruned model: "+C.model,color:"#f58518",get:function(j){var P=C.layers[j];return P?pair(Ls[j],P):null;}});
  var n=Ls.length;if(!n){host.appendChild(el("p",{"class":"hint"},"No layers."));return;}
  var ml=84,mb=120,mt=18+14*series.length,ph=220,avail=Math.max(400,(host.clientWidth||1100)-ml-24);
  var slot=Math.max(4,Math.min(40,Math.floor(avail/n))), gap=Math.max(1,Math.round(slot*0.2)), bw=Math.max(1.5,(slot-gap)/series.length);
  var pw=Math.max(320,n*slot), svg=sv("svg",{width:pw+ml+20,height:ph+mb+mt,id:"bars-svg"});
  var g=sv("g",{transform:"translate("+ml+","+mt+")"});svg.appendChild(g);
  [0,0.25,0.5,0.75,1].forEach(function(t){var y=ph*(1-t);g.appendChild(sv("line",{x1:0,x2:pw,y1:y,y2:y,stroke:"#e3e6eb"}));g.appendChild(sv("text",{x:-6,y:y+4,"text-anchor":"end","class":"t2"},(t*100)+"%"));});
  var every=Math.max(1,Math.ceil(12/slot));
  series.forEach(function(s,si){
    var tb=0,ta=0;
    for(var j=0;j<n;j++){var p=s.get(j);if(!p)continue;tb+=p[0];ta+=p[1];var f=frac(p[0],p[1]);
      var r=sv("rect",{x:j*slot+si*bw,y:ph*(1-Math.max(0,f)),width:Math.max(1,bw-(series.length>1?0.5:0)),height:ph*Math.max(0,f),fill:s.color,"class":"bar"});
      r.appendChild(sv("title",null,Ls[j].name+" ("+s.name+")\nremoved "+pct(f)+" of "+metric+": "+h(p[0])+" \u2192 "+h(p[1])));g.appendChild(r);}
    var mean=frac(tb,ta);var y=ph*(1-mean);
    g.appendChild(sv("line",{x1:0,x2:pw,y1:y,y2:y,stroke:s.color,"stroke-dasharray":"6 4","stroke-width":1.5}));
    g.appendChild(sv("line",{x1:pw-250,x2:pw-226,y1:-10-14*si,y2:-10-14*si,stroke:s.color,"stroke-dasharray":"6 4","stroke-width":1.5}));
    g.appendChild(sv("rect",{x:pw-220,y:-15-14*si,width:10,height:10,fill:s.color}));
    g.appendChild(svText({x:pw-206,y:-6-14*si,"class":"t2"},s.name+": overall "+pct(mean),clip(s.name,34)+": overall "+pct(mean)));
  });
  for(var j=0;j<n;j+=every){var x=j*slot+slot/2;g.appendChild(sv("text",{transform:"translate("+x+","+(ph+8)+") rotate(-60)","text-anchor":"end","class":"t2"},Ls[j].name,clip(Ls[j].name,26)));}
  g.appendChild(sv("line",{x1:0,x2:pw,y1:ph,y2:ph,stroke:"#6b7385"}));
  host.appendChild(svg);
  document.getElementById("bars-note").textContent="fraction of each layer's "+({params:"parameters",out:"output channels",macs:"MACs"})[metric]+" removed, layers in graph order; dashed: overall"+(C?"; blue: this inspect's plan, orange: the pruned model":"");
}
document.getElementById("metric").addEventListener("change",drawBars);
drawBars();

// ---------------------------------------------------------------- groups
function histogram(g){
  var vals=g.saliency_values||[];if(!vals.length)return document.createTextNode("-");
  var rem={},frz={};(g.removed||[]).forEach(function(i){rem[i]=1;});(g.frozen_indices||[]).forEach(function(i){frz[i]=1;});
  var lo=Infinity,hi=-Infinity;vals.forEach(function(v){if(v!==null){lo=Math.min(lo,v);hi=Math.max(hi,v);}});
  if(lo===Infinity)return document.createTextNode("-");
  if(hi<=lo){lo-=0.5;hi+=0.5;}
  var nb=24,kept=[],cut=[],fz=[],i;for(i=0;i<nb;i++){kept.push(0);cut.push(0);fz.push(0);}
  vals.forEach(function(v,j){if(v===null)return;var b=Math.min(nb-1,Math.floor((v-lo)/(hi-lo)*nb));if(frz[j])fz[b]++;else if(rem[j])cut[b]++;else kept[b]++;});
  var mx=1;for(i=0;i<nb;i++)mx=Math.max(mx,kept[i]+cut[i]+fz[i]);
  var w=168,hh=34,bw=w/nb,svg=sv("svg",{width:w,height:hh+12,"class":"hist","data-group":String(g.id)});
  for(i=0;i<nb;i++){var y=hh;[[cut[i],"#2b2f36"],[kept[i],groupStroke(g.id)],[fz[i],"#c2c7cf"]].forEach(function(p){if(!p[0])return;var bh=hh*p[0]/mx;y-=bh;svg.appendChild(sv("rect",{x:i*bw,y:y,width:bw-0.5,height:bh,fill:p[1]}));});}
  svg.appendChild(sv("line",{x1:0,x2:w,y1:hh,y2:hh,stroke:"#6b7385"}));
  svg.appendChild(sv("text",{x:0,y:hh+11,"class":"t2","font-size":"9"},lo.toFixed(2)));svg.appendChild(sv("text",{x:w,y:hh+11,"text-anchor":"end","class":"t2","font-size":"9"},hi.toFixed(2)));
  svg.appendChild(sv("title",null,"saliency of "+vals.length+" coupled channels: black removed, colored kept, gray frozen"));
  return svg;
}
(function groups(){
  var reasons=[],ref={};R.groups.forEach(function(g){(g.reasons||[]).forEach(function(r){if(!(r in ref)){ref[r]=reasons.length+1;reasons.push(r);}});});
  var t=el("table",{"class":"data",id:"groups-table"}),hd=el("tr");
  ["group","members","channels","kept","removed","equalization","saliency min / median / max","saliency histogram","frozen","why"].forEach(function(c){hd.appendChild(el("th",null,c));});
  var thead=el("thead");thead.appendChild(hd);t.appendChild(thead);var tb=el("tbody");t.appendChild(tb);
  R.groups.forEach(function(g){
    var tr=el("tr",{"class":"group-row","data-group":String(g.id),id:"group-"+g.id});
    var td=el("td");td.appendChild(swatch(g.id));td.appendChild(document.createTextNode(String(g.id)));tr.appendChild(td);
    var m=g.members.join(", ");tr.appendChild(el("td",{"class":"members",title:m},m));
    tr.appendChild(el("td",{"class":"num"},g.channels_before));tr.appendChild(el("td",{"class":"num"},g.channels_after));
    tr.appendChild(el("td",{"class":"num"},pct(frac(g.channels_before,g.channels_after))));
    tr.appendChild(el("td",null,g.equalization||"-"));
    tr.appendChild(el("td",{"class":"num"},g.saliency?g.saliency.map(function(x){return x===null?"-":Number(x).toFixed(3);}).join(" / "):"-"));
    var hc=el("td");hc.appendChild(histogram(g));tr.appendChild(hc);
    tr.appendChild(el("td",null,g.frozen?"all":(g.frozen_channels?String(g.frozen_channels):"")));
    var why=(g.reasons||[]).map(function(r){return ref[r];});tr.appendChild(el("td",{title:(g.reasons||[]).join("\n")},why.join(", ")));
    tr.addEventListener("click",function(){setHighlight(g.id,true);});
    tb.appendChild(tr);
  });
  var lg=el("div",{"class":"legend"},"Saliency histograms count coupled channels by saliency: ");
  [["#2b2f36","removed"],["hsl(200,55%,40%)","kept (the group's color)"],["#c2c7cf","frozen"]].forEach(function(p){var k=el("span",{"class":"sw"});k.style.background=p[0];lg.appendChild(k);lg.appendChild(document.createTextNode(p[1]+"  "));});
  document.getElementById("groups").appendChild(lg);
  document.getElementById("groups").appendChild(t);
  if(reasons.length){var box=document.getElementById("reasons");box.appendChild(el("div",{"class":"legend"},"Why channels are frozen (the numbers in the table's last column):"));var ol=el("ol");reasons.forEach(function(r){ol.appendChild(el("li",null,r));});box.appendChild(ol);}
})();

// ---------------------------------------------------------------- layers
(function layers(){
  var t=el("table",{"class":"data",id:"layers-table"}),hd=el("tr");
  var cols=["#","layer","op","group","in","out","params","MACs","removed params"];
  if(C)cols=cols.concat(["pruned model in","pruned model out","pruned model params","same as plan"]);
  cols.forEach(function(c){hd.appendChild(el("th",null,c));});
  var thead=el("thead");thead.appendChild(hd);t.appendChild(thead);var tb=el("tbody");t.appendChild(tb);
  var diffs=0;
  R.layers.forEach(function(L,j){
    var tr=el("tr",{"class":"layer-row","data-layer":String(j)});
    tr.appendChild(el("td",{"class":"num"},j));tr.appendChild(el("td",null,L.name));tr.appendChild(el("td",null,L.target));
    var tg=el("td");if(L.group!==null&&L.group!==undefined){tg.appendChild(swatch(L.group));tg.appendChild(document.createTextNode(String(L.group)));}else tg.textContent="-";tr.appendChild(tg);
    tr.appendChild(el("td",{"class":"num"},arrow(L.in_channels[0],L.in_channels[1])));tr.appendChild(el("td",{"class":"num"},arrow(L.out_channels[0],L.out_channels[1])));
    tr.appendChild(el("td",{"class":"num"},h(L.params[0])+" \u2192 "+h(L.params[1])));tr.appendChild(el("td",{"class":"num"},h(L.macs[0])+" \u2192 "+h(L.macs[1])));
    tr.appendChild(el("td",{"class":"num"},pct(frac(L.params[0],L.params[1]))));
    if(C){var P=C.layers[j];
      if(P){var same=P.in_channels===L.in_channels[1]&&P.out_channels===L.out_channels[1];if(!same)diffs++;
        tr.appendChild(el("td",{"class":"num"+(P.in_channels!==L.in_channels[1]?" diff":"")},P.in_channels));
        tr.appendChild(el("td",{"class":"num"+(P.out_channels!==L.out_channels[1]?" diff":"")},P.out_channels));
        tr.appendChild(el("td",{"class":"num"},h(P.params)));tr.appendChild(el("td",{"class":same?"same":"diff"},same?"\u2713":"\u2260"));}
      else{for(var q=0;q<3;q++)tr.appendChild(el("td",null,"-"));tr.appendChild(el("td",{"class":"diff"},"not matched"));}}
    tb.appendChild(tr);
  });
  var host=document.getElementById("layers");
  if(C){var um=C.unmatched.length?"; its layers not matched: ":"";
    var hint=el("p",{"class":"hint"},"Pruned model "+C.model+": "+C.matched+" of "+R.layers.length+" layers matched by "+C.matched_by+"; "+diffs+" differ from this inspect's plan"+(um?um+C.unmatched.slice(0,10).join(", ")+(C.unmatched.length>10?" \u2026":""):"")+".");
    if(C.unmatched.length>10)hint.title=C.unmatched.join(", ");host.appendChild(hint);}
  host.appendChild(t);
})();

// ---------------------------------------------------------------- frozen ops and settings
(function frozen(){
  var host=document.getElementById("frozen");
  if(!R.frozen_ops.length){host.appendChild(el("p",{"class":"hint"},(R.channel_free_ops||[]).length?"None froze a channel.":"None: every op is in the op registry."));return;}
  var t=el("table",{"class":"data"}),hd=el("tr");["op","type","node"].forEach(function(c){hd.appendChild(el("th",null,c));});t.appendChild(hd);
  R.frozen_ops.forEach(function(o){var tr=el("tr",{"class":"frozen-row"});tr.appendChild(el("td",null,o.label||o.name));tr.appendChild(el("td",null,o.target));tr.appendChild(el("td",null,o.name));t.appendChild(tr);});
  host.appendChild(t);
})();
(function channelFree(){
  var free=R.channel_free_ops||[];if(!free.length)return;
  var host=document.getElementById("frozen");
  host.appendChild(el("p",{"class":"hint"},free.length+" more ops are not in the op registry, but no channel reached them (integer masks, positions): they froze nothing."));
  var t=el("table",{"class":"data",id:"channel-free"}),hd=el("tr");["op","type","node"].forEach(function(c){hd.appendChild(el("th",null,c));});t.appendChild(hd);
  free.forEach(function(o){var tr=el("tr",{"class":"free-row"});tr.appendChild(el("td",null,o.label||o.name));tr.appendChild(el("td",null,o.target));tr.appendChild(el("td",null,o.name));t.appendChild(tr);});
  host.appendChild(t);
})();
(function settings(){
  var t=el("table",{"class":"data"});Object.keys(R.settings).sort().forEach(function(k){var v=R.settings[k];var tr=el("tr");tr.appendChild(el("td",null,k));tr.appendChild(el("td",null,typeof v==="object"&&v!==null?JSON.stringify(v):String(v)));t.appendChild(tr);});
  document.getElementById("settings").appendChild(t);
})();

if(!window.__prunecErrors){
  var st=document.getElementById("status");st.textContent="rendered "+R.groups.length+" groups, "+R.layers.length+" layers, "+N+" ops";
  st.setAttribute("data-ok","1");document.body.setAttribute("data-ok","1");
}
})();
"""
