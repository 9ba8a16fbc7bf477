// All the text of the site lives here: edit this file to change the company, services or contact details.
export const company = {
  name: 'Brightline Systems',
  eyebrow: 'Software consultancy · Since 2012',
  tagline: 'Software that keeps your business moving',
  intro:
    'We design, build and run dependable software for growing companies: from the first prototype to the platform your customers rely on every day.',
  primaryCta: 'Book a free consultation',
  secondaryCta: 'Our services',
}

export const nav = [
  { id: 'services', label: 'Services' },
  { id: 'about', label: 'About us' },
  { id: 'testimonials', label: 'Clients' },
  { id: 'contact', label: 'Contact' },
]

export const servicesIntro = {
  title: 'Services',
  text: 'Everything you need to plan, build and operate software, from one accountable team.',
}

export const services = [
  {
    icon: '🧭',
    title: 'Digital strategy',
    text: 'Workshops and roadmaps that turn business goals into a clear, costed technology plan.',
  },
  {
    icon: '🛠️',
    title: 'Custom software',
    text: 'Web and mobile applications built by senior teams, tested and documented from day one.',
  },
  {
    icon: '☁️',
    title: 'Cloud & infrastructure',
    text: 'Migrations, automation and monitoring so your systems scale without surprises.',
  },
  {
    icon: '🔒',
    title: 'Security & compliance',
    text: 'Audits, hardening and GDPR-ready processes that protect your data and your customers.',
  },
  {
    icon: '📈',
    title: 'Data & analytics',
    text: 'Dashboards and pipelines that put the numbers your teams need in front of them.',
  },
  {
    icon: '🤝',
    title: 'Support & maintenance',
    text: 'A 24/7 service desk and clear SLAs, so your software keeps working after launch.',
  },
]

export const about = {
  title: 'A partner for the long run',
  paragraphs: [
    'Founded in 2012, Brightline Systems is an independent team of 85 engineers, designers and consultants with offices in Amsterdam and Berlin.',
    'We work in small, stable teams that stay with a client for years. That is how we learn your business well enough to build the right thing, and to keep it running.',
  ],
  values: ['Senior teams, no hand-offs', 'Transparent, fixed-price phases', 'Your code, your data, always'],
}

export const stats = [
  { value: '12+', label: 'years in business' },
  { value: '240', label: 'projects delivered' },
  { value: '98%', label: 'client retention' },
  { value: '24/7', label: 'support coverage' },
]

export const testimonialsTitle = 'What our clients say'

export const testimonials = [
  {
    quote: 'Brightline rebuilt our ordering platform in four months. Checkout errors dropped to almost zero.',
    name: 'Maria Jensen',
    role: 'COO, Nordic Foods',
  },
  {
    quote: 'They explain trade-offs plainly and deliver what they promise. A rare kind of supplier.',
    name: 'Tom Becker',
    role: 'CTO, Hansa Logistics',
  },
  {
    quote: 'Our cloud bill fell by a third after their migration, and our nights got a lot quieter.',
    name: 'Priya Raman',
    role: 'Head of IT, Meridian Health',
  },
]

export const contact = {
  title: 'Let’s talk about your project',
  text: 'Tell us a little about what you need. We answer every message within one business day.',
  email: 'hello@brightline.example',
  phone: '+31 20 555 0142',
  address: 'Keizersgracht 120, 1015 CW Amsterdam',
  hours: 'Mon–Fri, 9:00–18:00 CET',
}

export const footer = {
  links: [
    { label: 'Careers', href: '#' },
    { label: 'Privacy', href: '#' },
    { label: 'Imprint', href: '#' },
  ],
}
