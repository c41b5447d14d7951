/*
 * Cockpit's light and dark themes, as Cockpit's own PatternFly 6 pages
 * follow them: the html element has the class pf-v6-theme-dark when the
 * shell's style (localStorage 'shell:style': 'auto', 'light' or 'dark') is
 * dark, or is 'auto' and the browser prefers a dark colour scheme.
 *
 * The style changes three ways, each followed live: the shell's style
 * switcher dispatches a 'cockpit-style' event (detail.style) into every
 * page's window, since a localStorage write fires no 'storage' event in
 * the window that wrote it; another window of the same origin changes
 * 'shell:style' ('storage'); the system's preference changes (media query).
 */
export const DARK_CLASS = 'pf-v6-theme-dark';

function apply(style) {
    const chosen = style || window.localStorage.getItem('shell:style') || 'auto';
    const prefersDark = window.matchMedia?.('(prefers-color-scheme: dark)').matches ?? false;
    const dark = chosen === 'dark' || (chosen === 'auto' && prefersDark);
    document.documentElement.classList.toggle(DARK_CLASS, dark);
}

export function followCockpitTheme() {
    window.addEventListener('storage', (event) => {
        if (event.key === 'shell:style') apply();
    });
    window.addEventListener('cockpit-style', (event) => {
        apply(event.detail?.style);
    });
    window.matchMedia?.('(prefers-color-scheme: dark)').addEventListener('change', () => apply());
    apply();
}
