import "./style.css";
import { AlertsFeed } from "./charts/alerts";
import { VaccineBars } from "./charts/bars";
import { PipelinePanel } from "./charts/pipeline";
import { DailySeries } from "./charts/timeseries";
import { LiveFeed, type ConnectionStatus } from "./live";
import { showPatient } from "./patient";

const element = (id: string): HTMLElement => {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page lacks #${id}`);
  return found;
};

const bars = new VaccineBars(element("vaccines"));
const daily = new DailySeries(element("daily"));
const alerts = new AlertsFeed(element("alerts"), element("alerts-empty"));
const pipeline = new PipelinePanel(element("pipeline"));
const vaccinesEmpty = element("vaccines-empty");
const connection = element("connection");

const statusText: Record<ConnectionStatus, string> = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
};

// Redraws at most once per animation frame however fast deltas arrive.
let scheduled = false;
const feed = new LiveFeed({
  onStatus: (status) => {
    connection.textContent = statusText[status];
    connection.dataset.status = status;
  },
  onChange: (state) => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      vaccinesEmpty.hidden = state.vaccines.size > 0;
      bars.update(state.vaccines.values());
      daily.update(state.days);
      alerts.update(state.alerts.values());
      pipeline.update(state.pipeline);
      document.body.dataset.seq = String(state.seq);
    });
  },
});
feed.start();

function route(): void {
  const match = /^#\/patient\/(.+)$/.exec(location.hash);
  element("dashboard").hidden = Boolean(match);
  element("patient").hidden = !match;
  if (match) void showPatient(element("patient-view"), decodeURIComponent(match[1]));
}
window.addEventListener("hashchange", route);
route();
