// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
export const palette = {
  blue: "#0072B2",
  orange: "#E69F00",
  sky: "#56B4E9",
  green: "#009E73",
  yellow: "#F0E442",
  vermillion: "#D55E00",
  purple: "#CC79A7",
  ink: "#1b1f24",
  muted: "#5b6470",
  grid: "#d8dde3",
};

export const reducedMotion = (): boolean =>
  window.matchMedia?.("(prefers-reduced-motion: reduce)").matches ?? false;

export const transitionMs = (): number => (reducedMotion() ? 0 : 450);
