"""The dashboard page: one HTML document with its own CSS and script, no external files."""

DASHBOARD = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>streamcap</title>
<style>
body{font-family:system-ui,Arial,sans-serif;margin:0;background:#111;color:#eee}
header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#222}
header h1{font-size:1.2em;margin:0}
#search{display:flex;gap:.4em;flex:1}
#search input[type=text]{flex:1;padding:.3em}
main{padding:1em}
#tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em}
.tile{background:#1c1c1c;border-radius:6px;padding:.6em}
.tile img.live{width:100%;background:#000;min-height:120px;display:block}
.name{font-weight:bold;word-break:break-all}
.status{padding:0 .4em;border-radius:3px;margin-left:.4em;font-size:.85em}
.st-connected{background:#1a6b2a}.st-lost,.st-reconnecting{background:#8a5a00}
.st-gave_up,.st-failed,.st-ended,.st-truncated{background:#7a1d1d}.st-starting,.st-history{background:#444}
.caption{font-size:1.1em;margin:.3em 0;min-height:1.3em}
.meta{color:#aaa;font-size:.85em}
.timeline{max-height:260px;overflow-y:auto;margin-top:.4em}
.entry{display:flex;gap:.5em;align-items:center;border-top:1px solid #333;padding:.25em 0}
.entry img{width:96px;height:auto;background:#000}
.entry.alert{background:#3a1b1b}
.when{color:#aaa;font-size:.8em;white-space:nowrap}
#results{margin-bottom:1em}
#results:empty{display:none}
#nodes{margin-bottom:1em;color:#ccc;font-size:.9em}
#nodes:empty{display:none}
.node{display:inline-block;background:#1c1c1c;border-radius:4px;padding:.3em .6em;margin:0 .5em .3em 0}
.node.down{background:#5a1d1d}
</style></head><body>
<header><h1>streamcap</h1>
<form id="search"><input type="text" id="q" placeholder="search captions and objects, e.g. dog on sofa">
<select id="order"><option value="newest">newest</option><option value="best">best match</option></select>
<input type="text" id="since" placeholder="since (2h)" size="8"><button>search</button></form>
<a href="/metrics" style="color:#8cf">metrics</a></header>
<main><div id="results"></div><div id="nodes"></div><div id="tiles"></div></main>
<script>
"use strict";
var tiles = {};
function el(tag, cls, text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=text;return e;}
function when(t){if(!t)return "";var d=new Date(t);return isNaN(d)?t:d.toLocaleString();}
function tile(cam){
  var t = tiles[cam.name];
  if(t) return t;
  t = {box: el("div","tile")}; t.box.setAttribute("data-camera", cam.name);
  var head = el("div"); t.nameEl = el("span","name",cam.name); t.statusEl = el("span","status");
  head.appendChild(t.nameEl); head.appendChild(t.statusEl); t.box.appendChild(head);
  if(cam.live){ t.img = el("img","live"); t.img.alt = "live video of " + cam.name;
    t.img.src = "/video/" + cam.index + ".mjpg"; t.box.appendChild(t.img); }
  t.captionEl = el("div","caption"); t.metaEl = el("div","meta"); t.timelineEl = el("div","timeline");
  t.box.appendChild(t.captionEl); t.box.appendChild(t.metaEl); t.box.appendChild(t.timelineEl);
  document.getElementById("tiles").appendChild(t.box); tiles[cam.name] = t; return t;
}
function showState(state){
  state.cameras.forEach(function(cam){
    var t = tile(cam), s = cam.status;
    var text = s; if(cam.outage_s!=null) text += " for " + cam.outage_s.toFixed(0) + " s";
    t.statusEl.textContent = text; t.statusEl.className = "status st-" + s;
    t.captionEl.textContent = cam.caption || "";
    t.metaEl.textContent = cam.live ? (cam.fps.toFixed(1) + " fps, latency " +
      (cam.latency_ms==null ? "-" : cam.latency_ms.toFixed(0) + " ms") + ", " + cam.frames + " frames") : "history";
    if(cam.node) t.metaEl.textContent += ", node " + cam.node;
  });
  if(state.nodes) showNodes(state.nodes);
}
function showNodes(nodes){  // a cluster run (monitor --config/--ray): one line per node
  var box = document.getElementById("nodes"); box.innerHTML = "";
  nodes.forEach(function(n){
    var up = n.groups.every(function(g){return g.reachable;});
    var text = (n.node || "not placed yet") + ": " + n.cameras.join(", ") + " — " + n.groups.map(function(g){
      return g.group + (g.failed ? " failed" : g.reachable ? " answered " + g.answered_s_ago.toFixed(1) + " s ago"
        : " unreachable for " + g.answered_s_ago.toFixed(0) + " s");}).join("; ");
    var row = el("span", "node" + (up ? "" : " down"), text); row.setAttribute("data-node", n.node || ""); box.appendChild(row);
  });
}
function entryEl(e, withCamera){
  var row = el("div","entry " + e.kind);
  if(e.snapshot){var im = el("img"); im.src = e.snapshot; im.alt = e.text; im.loading="lazy"; row.appendChild(im);}
  var body = el("div"); body.appendChild(el("div","when", when(e.time) + (withCamera ? "  " + e.camera : "")));
  body.appendChild(el("div", "text", (e.kind=="alert" ? "ALERT: " : "") + e.text));
  row.appendChild(body); return row;
}
function getJSON(url, done){var x=new XMLHttpRequest();x.open("GET",url);x.onload=function(){if(x.status==200)done(JSON.parse(x.responseText));};x.send();}
function poll(){getJSON("/api/state", showState);}
function pollTimeline(){
  Object.keys(tiles).forEach(function(name){
    getJSON("/api/timeline?limit=30&camera=" + encodeURIComponent(name), function(r){
      var box = tiles[name].timelineEl; box.innerHTML = "";
      r.entries.forEach(function(e){box.appendChild(entryEl(e,false));});
    });
  });
}
document.getElementById("search").onsubmit = function(ev){
  ev.preventDefault();
  var q = document.getElementById("q").value, out = document.getElementById("results");
  var url = "/api/search?q=" + encodeURIComponent(q) + "&order=" + document.getElementById("order").value;
  var since = document.getElementById("since").value; if(since) url += "&since=" + encodeURIComponent(since);
  getJSON(url, function(r){
    out.innerHTML = ""; out.appendChild(el("h3", null, r.error ? r.error : r.results.length + " results for \u201c" + q + "\u201d"));
    r.results.forEach(function(e){ var row = entryEl(e,true); row.className += " result"; out.appendChild(row); });
  });
};
poll(); setInterval(poll, 1000); setTimeout(pollTimeline, 300); setInterval(pollTimeline, 3000);
</script></body></html>
"""
