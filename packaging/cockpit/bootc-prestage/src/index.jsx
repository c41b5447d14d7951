/*
 * Entry point of the Cockpit page (bundled by packaging/cockpit/build-page.mjs
 * into bootc-prestage.js and bootc-prestage.css). The CSS imports come
 * first, in cascade order: PatternFly's base (tokens of both themes, fonts,
 * reset), then each component's own CSS (imported by the components), then
 * the page's few rules.
 */
import '@patternfly/react-core/dist/styles/base.css';

import React from 'react';
import { createRoot } from 'react-dom/client';

import { App } from './app.jsx';
import { createModel } from './model.js';
import { followCockpitTheme } from './theme.js';

import './bootc-prestage.css';

// Before the first paint: the script runs in <head>, the theme class is on
// <html> before the body is parsed.
followCockpitTheme();

document.addEventListener('DOMContentLoaded', function () {
    const root = createRoot(document.getElementById('app'));
    const model = createModel(function () {
        root.render(<App model={model} view={model.view()} />);
    });
});
