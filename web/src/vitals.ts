// Reading qSOFA vital signs out of FHIR Observations for the patient view.

export type VitalKind = "rr" | "sbp" | "gcs";

export interface VitalPoint {
  kind: VitalKind;
  time: Date;
  value: number;
  observation: string;
}

const LOINC = "http://loinc.org";
const RESPIRATORY_RATE = "9279-1";
const SYSTOLIC = "8480-6";
const BP_PANELS = ["85354-9", "55284-4"];
const GCS_TOTAL = "9269-2";

/** The codes to ask the server for, as a FHIR token list. */
export const vitalCodes = [RESPIRATORY_RATE, SYSTOLIC, GCS_TOTAL, ...BP_PANELS].map((c) => `${LOINC}|${c}`).join(",");

/** The qSOFA threshold for each vital and which side of it counts as a point. */
export const thresholds: Record<VitalKind, { value: number; above: boolean; label: string; unit: string }> = {
  rr: { value: 22, above: true, label: "Respiratory rate", unit: "/min" },
  sbp: { value: 100, above: false, label: "Systolic blood pressure", unit: "mmHg" },
  gcs: { value: 15, above: false, label: "Glasgow coma score", unit: "" },
};

interface Coding {
  system?: string;
  code?: string;
}
interface Quantity {
  value?: number;
}
interface ObservationLike {
  resourceType?: string;
  id?: string;
  status?: string;
  code?: { coding?: Coding[] };
  effectiveDateTime?: string;
  effectivePeriod?: { start?: string };
  effectiveInstant?: string;
  valueQuantity?: Quantity;
  component?: { code?: { coding?: Coding[] }; valueQuantity?: Quantity }[];
}

const hasCode = (codings: Coding[] | undefined, code: string): boolean =>
  (codings ?? []).some((c) => c.system === LOINC && c.code === code);

export function vitalsOf(resource: unknown): VitalPoint[] {
  const obs = resource as ObservationLike;
  if (obs?.resourceType !== "Observation" || obs.status === "entered-in-error" || obs.status === "cancelled") return [];
  const when = obs.effectiveDateTime ?? obs.effectiveInstant ?? obs.effectivePeriod?.start;
  const time = when ? new Date(when) : undefined;
  if (!time || Number.isNaN(time.getTime())) return [];
  const id = `Observation/${obs.id ?? ""}`;
  const points: VitalPoint[] = [];
  const push = (kind: VitalKind, q: Quantity | undefined) => {
    if (typeof q?.value === "number") points.push({ kind, time, value: q.value, observation: id });
  };
  const codings = obs.code?.coding;
  if (hasCode(codings, RESPIRATORY_RATE)) push("rr", obs.valueQuantity);
  if (hasCode(codings, SYSTOLIC)) push("sbp", obs.valueQuantity);
  if (hasCode(codings, GCS_TOTAL)) push("gcs", obs.valueQuantity);
  if (BP_PANELS.some((panel) => hasCode(codings, panel))) {
    for (const component of obs.component ?? []) {
      if (hasCode(component.code?.coding, SYSTOLIC)) push("sbp", component.valueQuantity);
    }
  }
  return points;
}

export function meetsCriterion(point: VitalPoint): boolean {
  const t = thresholds[point.kind];
  return t.above ? point.value >= t.value : point.kind === "gcs" ? point.value < t.value : point.value <= t.value;
}
