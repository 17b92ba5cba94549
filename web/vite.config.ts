import { defineConfig } from "vite";

// The build output is embedded into the `flare` binary (crates/web), so asset names are
// stable (no content hashes): the server sets cache headers itself.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    rollupOptions: {
      output: {
        entryFileNames: "assets/[name].js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
  server: {
    proxy: {
      "/api": { target: "http://127.0.0.1:8080", ws: true },
      "/fhir": "http://127.0.0.1:8080",
    },
  },
});
