// Builds the two browser apps the Python browser tests serve (tests/test_aisdk_browser.py): the real
// `useChat` of AI SDK 5 (apps/v5) and AI SDK 4 (apps/v4), each pointed at a modelgate chat endpoint
// given in the page's `?api=` query parameter.
//
//   node node_modules/vite/bin/vite.js build --outDir DIR
import { resolve } from "node:path";
import { defineConfig } from "vite";

const apps = resolve(import.meta.dirname, "apps");

export default defineConfig({
  root: apps,
  base: "./", // the pages are served from any directory of a static server
  logLevel: "warn",
  build: {
    emptyOutDir: true,
    minify: false, // readable stack traces when a test fails; size does not matter here
    reportCompressedSize: false,
    rollupOptions: {
      input: { v4: resolve(apps, "v4/index.html"), v5: resolve(apps, "v5/index.html") },
      // The SDKs mark their React modules "use client" (for server-component bundlers); meaningless here.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
});
