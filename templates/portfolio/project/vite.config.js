import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// base './' keeps asset URLs relative: the built site is served under /apps/<id>/preview/.
export default defineConfig({
  base: './',
  plugins: [vue()],
})
