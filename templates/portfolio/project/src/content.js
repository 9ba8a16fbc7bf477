// All the text of the site lives here: edit this file to change names, projects, skills or links.
export const profile = {
  name: 'Alex Morgan',
  initials: 'AM',
  role: 'Product designer & front-end developer',
  tagline: 'I design and build calm, fast interfaces for products people use every day.',
  location: 'Lisbon, Portugal',
  available: 'Open to freelance work from June',
}

export const nav = [
  { id: 'about', label: 'About' },
  { id: 'projects', label: 'Projects' },
  { id: 'skills', label: 'Skills' },
  { id: 'contact', label: 'Contact' },
]

export const about = {
  paragraphs: [
    'For eight years I have worked where design meets code: shaping product ideas in sketches, then shipping them as accessible, well-tested interfaces.',
    'I have led design systems at two start-ups, taught front-end workshops, and I still enjoy the small details: a clear label, a smooth transition, a page that loads in a blink.',
  ],
  facts: [
    { value: '8+', label: 'years of experience' },
    { value: '40', label: 'projects shipped' },
    { value: '12', label: 'happy clients' },
  ],
}

export const projects = [
  {
    title: 'Tidewater Banking',
    category: 'Product design',
    year: 2025,
    emoji: '🏦',
    color: '#6366f1',
    description: 'A mobile banking app redesign that cut the steps to send money from seven to three.',
    tags: ['Figma', 'Design system', 'User research'],
    link: '#',
  },
  {
    title: 'Fieldnotes',
    category: 'Web app',
    year: 2024,
    emoji: '📓',
    color: '#0ea5e9',
    description: 'An offline-first note-taking app for researchers, built with Vue and IndexedDB.',
    tags: ['Vue', 'PWA', 'IndexedDB'],
    link: '#',
  },
  {
    title: 'Orbit Analytics',
    category: 'Dashboard',
    year: 2024,
    emoji: '📊',
    color: '#f59e0b',
    description: 'Real-time charts and a query builder for a SaaS analytics start-up.',
    tags: ['TypeScript', 'D3', 'WebSockets'],
    link: '#',
  },
  {
    title: 'Greenhouse',
    category: 'Brand & website',
    year: 2023,
    emoji: '🌿',
    color: '#10b981',
    description: 'Identity and marketing site for a plant-subscription shop; conversions up 38%.',
    tags: ['Branding', 'Vite', 'SEO'],
    link: '#',
  },
  {
    title: 'Soundboard',
    category: 'Side project',
    year: 2023,
    emoji: '🎧',
    color: '#ec4899',
    description: 'A tiny web synth played from the keyboard, written with the Web Audio API.',
    tags: ['Web Audio', 'Canvas'],
    link: '#',
  },
  {
    title: 'Atlas Docs',
    category: 'Documentation',
    year: 2022,
    emoji: '🗺️',
    color: '#8b5cf6',
    description: 'A searchable documentation site with live code examples for an open-source UI kit.',
    tags: ['Markdown', 'Search', 'Accessibility'],
    link: '#',
  },
]

export const skills = [
  { group: 'Design', items: ['Figma', 'Prototyping', 'Design systems', 'User research', 'Typography'] },
  { group: 'Front-end', items: ['Vue', 'JavaScript', 'TypeScript', 'HTML & CSS', 'Accessibility'] },
  { group: 'Tools', items: ['Vite', 'Git', 'Storybook', 'Playwright', 'Node.js'] },
]

export const contact = {
  intro: 'Have a project in mind, or just want to say hello? My inbox is always open.',
  email: 'hello@alexmorgan.dev',
  links: [
    { label: 'GitHub', url: 'https://github.com/' },
    { label: 'LinkedIn', url: 'https://www.linkedin.com/' },
    { label: 'Dribbble', url: 'https://dribbble.com/' },
  ],
}
