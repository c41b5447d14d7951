/*
 * The page's view: PatternFly components, as Cockpit's own pages use them,
 * rendering the model's view() (model.js). Stable ids and data-* attributes
 * (transaction, tx-*, hooks, log, history, problem, daemon) are what the
 * tests read, and what a person debugging the page can find.
 *
 * What must stay true:
 * - Rows of the hooks table re-render only when their hook's tuple changed
 *   (memo on its four values): a transaction can have hundreds of hooks,
 *   and the page must stay responsive while they all report progress.
 * - Table cells get a ref that lives as long as the cell (Cell, HeaderCell):
 *   PatternFly's Td and Th measure their width (a forced layout) in an effect
 *   that runs whenever the ref they are given changes, and without one they
 *   make a new ref on every render. With hundreds of rows and a growing log
 *   that was most of the page's time during a busy transaction.
 * - The log pane's lines are not React children: the model appends them to
 *   the element (textContent only), so a line costs one DOM node and no
 *   re-render of the whole pane.
 */
import React, { memo, useCallback, useLayoutEffect, useRef, useState } from 'react';

import cockpit from 'cockpit';

import { Alert, AlertActionCloseButton } from '@patternfly/react-core/dist/esm/components/Alert/index.js';
import { Button } from '@patternfly/react-core/dist/esm/components/Button/index.js';
import { Card, CardBody, CardHeader, CardTitle } from '@patternfly/react-core/dist/esm/components/Card/index.js';
import { Content } from '@patternfly/react-core/dist/esm/components/Content/index.js';
import {
    DescriptionList, DescriptionListDescription, DescriptionListGroup, DescriptionListTerm,
} from '@patternfly/react-core/dist/esm/components/DescriptionList/index.js';
import { EmptyState, EmptyStateBody } from '@patternfly/react-core/dist/esm/components/EmptyState/index.js';
import { Label } from '@patternfly/react-core/dist/esm/components/Label/index.js';
import { Page, PageSection } from '@patternfly/react-core/dist/esm/components/Page/index.js';
import { Progress } from '@patternfly/react-core/dist/esm/components/Progress/index.js';
import { Title } from '@patternfly/react-core/dist/esm/components/Title/index.js';
import { Flex, FlexItem } from '@patternfly/react-core/dist/esm/layouts/Flex/index.js';
import { Stack, StackItem } from '@patternfly/react-core/dist/esm/layouts/Stack/index.js';
import { Table, Tbody, Td, Th, Thead, Tr } from '@patternfly/react-table/dist/esm/components/Table/index.js';
import { ExclamationCircleIcon } from '@patternfly/react-icons/dist/esm/icons/exclamation-circle-icon.js';

import {
    CANCELLABLE_STATES, PHASE_LABELS, WORKING_STATES, SERVICE, clampPercent, formatDuration, formatTime, label, toneOf,
} from './model.js';

const _ = cockpit.gettext;

/** A tone (model.toneOf) as a PatternFly Label status and Progress variant. */
const LABEL_STATUS = { success: 'success', danger: 'danger', warning: 'warning', info: 'info' };
const PROGRESS_VARIANT = { success: 'success', danger: 'danger', warning: 'warning' };

function StateLabel({ state, id }) {
    const tone = toneOf(state);
    return (
        <Label id={id} isCompact status={LABEL_STATUS[tone]} color={tone === 'neutral' ? 'grey' : undefined}
               data-state={state} data-tone={tone}>
            {label(state)}
        </Label>
    );
}

function DaemonStatus({ daemon }) {
    const color = { idle: 'green', busy: 'blue', unavailable: 'red', stopped: 'grey', unknown: 'grey' }[daemon.state] || 'grey';
    return (
        <Flex id="daemon" data-state={daemon.state} aria-live="polite" spaceItems={{ default: 'spaceItemsSm' }}
              alignItems={{ default: 'alignItemsCenter' }}>
            <FlexItem><Label color={color} id="daemon-state">{daemon.text}</Label></FlexItem>
            {daemon.version && (
                <FlexItem>
                    <Content component="small" id="daemon-version">{cockpit.format(_('version $0'), daemon.version)}</Content>
                </FlexItem>
            )}
        </Flex>
    );
}

function Problems({ problems, onDismiss }) {
    if (problems.length === 0) return null;
    return (
        <Stack id="problem" hasGutter>
            {problems.map(([key, text]) => (
                <StackItem key={key}>
                    <Alert variant="danger" isInline className="problem" data-problem={key}
                           title={<span className="problem-text">{text}</span>}
                           actionClose={key === 'connection'
                               ? undefined
                               : <AlertActionCloseButton className="dismiss" title={_('Dismiss')} onClose={() => onDismiss(key)} />} />
                </StackItem>
            ))}
        </Stack>
    );
}

/** A Td measured once, when it mounts (see the header). */
function Cell(props) {
    const ref = useRef(null);
    return <Td ref={ref} {...props} />;
}

/** A Th measured once, when it mounts (see the header). */
function HeaderCell(props) {
    const ref = useRef(null);
    return <Th ref={ref} {...props} />;
}

const HooksHeader = memo(function HooksHeader() {
    return (
        <Thead>
            <Tr>
                <HeaderCell>{_('Hook')}</HeaderCell>
                <HeaderCell modifier="fitContent">{_('Result')}</HeaderCell>
                <HeaderCell width={25}>{_('Progress')}</HeaderCell>
                <HeaderCell>{_('Status')}</HeaderCell>
            </Tr>
        </Thead>
    );
});

const HistoryHeader = memo(function HistoryHeader() {
    return (
        <Thead>
            <Tr>
                <HeaderCell>{_('Transaction')}</HeaderCell>
                <HeaderCell>{_('Deployment')}</HeaderCell>
                <HeaderCell>{_('Phase')}</HeaderCell>
                <HeaderCell>{_('State')}</HeaderCell>
                <HeaderCell>{_('Error')}</HeaderCell>
                <HeaderCell>{_('Finished')}</HeaderCell>
            </Tr>
        </Thead>
    );
});

const HookRow = memo(function HookRow({ name, result, percent, status }) {
    const pc = clampPercent(percent);
    return (
        <Tr data-hook={name} data-result={result}>
            <Cell dataLabel={_('Hook')} className="hook-name" modifier="nowrap">{name}</Cell>
            <Cell dataLabel={_('Result')} className="hook-result" modifier="fitContent"><StateLabel state={result} /></Cell>
            <Cell dataLabel={_('Progress')} className="hook-percent">
                <Progress value={pc} size="sm" measureLocation="outside" variant={PROGRESS_VARIANT[toneOf(result)]}
                          aria-label={cockpit.format(_('Progress of $0'), name)} valueText={pc + ' %'} />
            </Cell>
            <Cell dataLabel={_('Status')} className="hook-status">{status}</Cell>
        </Tr>
    );
});

const HooksTable = memo(function HooksTable({ hooks }) {
    return (
        <Table id="hooks" variant="compact" aria-label={_('Hooks')}>
            <HooksHeader />
            <Tbody>
                {hooks.map(([name, result, percent, status]) => (
                    <HookRow key={name} name={name} result={result} percent={percent} status={status} />
                ))}
            </Tbody>
        </Table>
    );
});

/** The pane the model writes the followed transaction's lines into. */
function LogPane({ model, path }) {
    const ref = useRef(null);
    useLayoutEffect(() => {
        model.attachLog(ref.current, path);
        return () => model.attachLog(null, null);
    }, [model, path]);
    return (
        <div id="log" className="log" role="log" aria-live="off" tabIndex={0} ref={ref}
             data-empty={_('No output since this page was opened. The full log has all of it.')} />
    );
}

function Fact({ term, id, children }) {
    return (
        <DescriptionListGroup>
            <DescriptionListTerm>{term}</DescriptionListTerm>
            <DescriptionListDescription id={id}>{children}</DescriptionListDescription>
        </DescriptionListGroup>
    );
}

function TransactionCard({ model, view }) {
    const rec = view.followed;
    const [cancelling, setCancelling] = useState(false);
    const p = rec && rec.props;
    const path = rec ? rec.path : null;
    const onCancel = useCallback(() => {
        setCancelling(true);
        model.cancel(path).finally(() => setCancelling(false));
    }, [model, path]);

    if (!p) {
        const unavailable = view.daemon.state === 'unavailable';
        return (
            <Card id="transaction" data-state="">
                <CardHeader actions={view.pinned ? { actions: <FollowButton model={model} />, hasNoOffset: true } : undefined}>
                    <CardTitle component="h2" id="tx-title">
                        {rec ? cockpit.format(_('Transaction $0'), rec.id) : _('No transaction yet')}
                    </CardTitle>
                </CardHeader>
                <CardBody>
                    {unavailable
                        ? (
                            <EmptyState id="service-missing" headingLevel="h3" status="danger" icon={ExclamationCircleIcon}
                                        titleText={_('bootc-prestaged is not available')} variant="sm">
                                <EmptyStateBody>
                                    {cockpit.format(_('$0 is not on the system bus. The page connects as soon as it appears.'), SERVICE)}
                                </EmptyStateBody>
                            </EmptyState>
                        )
                        : (
                            <Content component="p" className="muted">
                                {_('A transaction appears here when bootc, bootc-prestage or busctl starts one.')}
                            </Content>
                        )}
                </CardBody>
            </Card>
        );
    }

    const tone = toneOf(p.State);
    const percent = clampPercent(p.Progress);
    const denied = view.admin === false;
    const actions = (
        <>
            {view.pinned && <FollowButton model={model} />}
            {CANCELLABLE_STATES.has(p.State) && (
                <Button id="cancel" variant="danger" onClick={onCancel} isDisabled={denied || cancelling}
                        title={denied ? _('Cancelling needs administrative access') : ''}>
                    {_('Cancel')}
                </Button>
            )}
        </>
    );
    return (
        <Card id="transaction" data-state={p.State} data-path={rec.path}>
            <CardHeader actions={{ actions, hasNoOffset: false }}>
                <CardTitle component="h2" id="tx-title">{cockpit.format(_('Transaction $0'), p.Id || rec.id)}</CardTitle>
            </CardHeader>
            <CardBody>
                <Stack hasGutter>
                    <StackItem>
                        <DescriptionList isHorizontal isCompact columnModifier={{ lg: '2Col' }}>
                            <Fact term={_('State')}><StateLabel id="tx-state" state={p.State} /></Fact>
                            <Fact term={_('Phase')} id="tx-phase">{PHASE_LABELS[p.Phase] || p.Phase}</Fact>
                            <Fact term={_('Deployment')} id="tx-deployment">{p.Deployment}</Fact>
                            <Fact term={_('Current hook')} id="tx-current-hook">{p.CurrentHook || '—'}</Fact>
                            <Fact term={_('Started')} id="tx-started">{formatTime(p.StartedUsec)}</Fact>
                            <Fact term={_('Duration')} id="tx-duration">{formatDuration(p.StartedUsec, p.FinishedUsec)}</Fact>
                        </DescriptionList>
                    </StackItem>
                    <StackItem>
                        <Progress id="tx-progress" data-tone={tone} value={percent} title={_('Overall progress')}
                                  variant={PROGRESS_VARIANT[tone]} valueText={percent + ' %'} />
                    </StackItem>
                    {p.Error && (
                        <StackItem>
                            <Alert id="tx-error" variant="danger" isInline title={<span id="tx-error-name">{p.Error}</span>}>
                                <span id="tx-error-message">{p.ErrorMessage}</span>
                            </Alert>
                        </StackItem>
                    )}
                    <StackItem>
                        <Title headingLevel="h3" size="lg">{_('Hooks')}</Title>
                        <HooksTable hooks={p.Hooks} />
                    </StackItem>
                    <StackItem>
                        <Flex justifyContent={{ default: 'justifyContentSpaceBetween' }} alignItems={{ default: 'alignItemsCenter' }}>
                            <FlexItem><Title headingLevel="h3" size="lg">{_('Messages')}</Title></FlexItem>
                            <FlexItem>
                                <Button id="full-log" variant="link" isInline isDisabled={denied}
                                        onClick={() => model.loadFullLog(rec.path)}
                                        title={denied ? _('The full log needs administrative access: hook output may hold secrets') : ''}>
                                    {_('Load the full log')}
                                </Button>
                            </FlexItem>
                        </Flex>
                        <LogPane model={model} path={rec.path} />
                    </StackItem>
                </Stack>
            </CardBody>
        </Card>
    );
}

function FollowButton({ model }) {
    return <Button id="follow" variant="link" onClick={model.follow}>{_('Follow the active transaction')}</Button>;
}

const HistoryRow = memo(function HistoryRow({ rec, props: p, selected, onPin }) {
    const error = p.Error ? p.Error.replace(/^org\.containers\.bootc\.PreStage\.Error\./, '') : '';
    return (
        <Tr data-path={rec.path} data-state={p.State} isClickable isRowSelected={selected}
            aria-selected={selected ? 'true' : undefined}
            onRowClick={() => onPin(rec.path)} title={p.ErrorMessage || p.Deployment}>
            <Cell dataLabel={_('Transaction')} modifier="nowrap" className="mono">{p.Id || rec.id}</Cell>
            <Cell dataLabel={_('Deployment')} className="mono deployment" modifier="truncate">
                {p.Deployment.slice(p.Deployment.lastIndexOf('/') + 1)}
            </Cell>
            <Cell dataLabel={_('Phase')} modifier="nowrap">{PHASE_LABELS[p.Phase] || p.Phase}</Cell>
            <Cell dataLabel={_('State')} modifier="nowrap"><StateLabel state={p.State} /></Cell>
            <Cell dataLabel={_('Error')} className="history-error">
                {error ? error + (p.ErrorMessage ? ': ' + p.ErrorMessage : '') : ''}
            </Cell>
            <Cell dataLabel={_('Finished')} modifier="nowrap">{WORKING_STATES.has(p.State) ? '' : formatTime(p.FinishedUsec)}</Cell>
        </Tr>
    );
});

function HistoryCard({ model, view }) {
    const shownPath = view.followed ? view.followed.path : null;
    return (
        <Card id="history-card">
            <CardHeader><CardTitle component="h2" id="history-title">{_('Transactions')}</CardTitle></CardHeader>
            <CardBody>
                {view.history.length === 0
                    ? <Content component="p" id="history-empty" className="muted">{_('None yet.')}</Content>
                    : (
                        <Table id="history" variant="compact" aria-labelledby="history-title">
                            <HistoryHeader />
                            <Tbody>
                                {view.history.map((rec) => (
                                    <HistoryRow key={rec.path} rec={rec} props={rec.props} selected={rec.path === shownPath}
                                                onPin={model.pin} />
                                ))}
                            </Tbody>
                        </Table>
                    )}
            </CardBody>
        </Card>
    );
}

export function App({ model, view }) {
    return (
        <Page className="pf-m-no-sidebar" isContentFilled>
            <PageSection hasBodyWrapper={false} id="page-header">
                <Flex justifyContent={{ default: 'justifyContentSpaceBetween' }} alignItems={{ default: 'alignItemsCenter' }}>
                    <FlexItem><Title headingLevel="h1" size="2xl">{_('OS pre-stage')}</Title></FlexItem>
                    <FlexItem><DaemonStatus daemon={view.daemon} /></FlexItem>
                </Flex>
            </PageSection>
            <PageSection hasBodyWrapper={false} isFilled>
                <Stack hasGutter>
                    {view.problems.length > 0 && <StackItem><Problems problems={view.problems} onDismiss={model.dismiss} /></StackItem>}
                    <StackItem><TransactionCard model={model} view={view} /></StackItem>
                    <StackItem><HistoryCard model={model} view={view} /></StackItem>
                </Stack>
            </PageSection>
        </Page>
    );
}
