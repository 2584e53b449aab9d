//! The web UI in a real browser: Debian's Chromium, headless, driven over the DevTools protocol
//! (`cdp`), against a `devgem up` process. A user opens the page with the token in the fragment,
//! deploys a fixture by typing in the chat, reloads mid-deploy, and sees the stream resume to the
//! live URL; replies and messages render as text. Screenshots land in `target/screenshots/`.

use crate::cdp::{Browser, Page};
use crate::support::{DevgemProcess, events};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const XSS: &str = r#"<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">"#;

/// `target/screenshots/<name>`.
fn screenshot_path(name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    target.join("screenshots").join(name)
}

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

async fn wait(page: &Page, what: &str, expression: &str, seconds: u64) -> Value {
    match page.wait_for(what, expression, Duration::from_secs(seconds)).await {
        Ok(value) => value,
        Err(e) => panic!("{e}\nconsole:\n{}", page.console().join("\n")),
    }
}

async fn eval(page: &Page, expression: &str) -> Value {
    page.eval(expression).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Types `text` in the chat box and sends it, with Enter or with the Send button.
async fn say(page: &Page, text: &str, with_enter: bool) {
    eval(page, "document.querySelector('[data-testid=chat-input]').focus()").await;
    page.insert_text(text).await.expect("type");
    if with_enter {
        page.press_enter().await.expect("press Enter");
    } else {
        eval(page, "document.querySelector('[data-testid=send]').click()").await;
    }
}

/// What the page shows of the deployment card `id`: state, percent, the build log's lines (their
/// `data-line` keys) and the stages' statuses.
async fn card(page: &Page, id: &str) -> Value {
    eval(
        page,
        &format!(
            "(() => {{
                const card = document.querySelector(`[data-testid=deployment-card][data-deployment-id=${{CSS.escape({id})}}]`);
                if (!card) return null;
                const lines = [...card.querySelectorAll('[data-testid=build-log] .log-line')];
                return {{
                    state: card.dataset.state,
                    percent: Number(card.querySelector('[data-testid=progress-bar]').getAttribute('aria-valuenow')),
                    keys: lines.map((l) => l.dataset.line),
                    texts: lines.map((l) => l.textContent),
                    stages: [...card.querySelectorAll('[data-testid=stage]')].map((s) => [s.dataset.stage, s.dataset.status]),
                    url: card.querySelector('[data-testid=live-url]')?.href ?? null,
                    elapsed: card.querySelector('[data-testid=elapsed]').textContent,
                    outcome: card.querySelector('.outcome')?.textContent ?? '',
                }};
            }})()",
            id = js(id)
        ),
    )
    .await
}

fn keys(card: &Value) -> Vec<String> {
    card["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(str::to_owned)).collect()
}

const CONNECTED: &str = "document.querySelector('[data-testid=connection]')?.dataset.state === 'open'";

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_deploys_streams_resumes_after_a_reload_and_renders_replies_as_text() {
    let started = Instant::now();
    let browser = Browser::launch().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = DevgemProcess::start(dir.path(), &["up", "--port", "0"], &[]);
    let info = server.wait_ready().await;
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token").trim().to_owned();
    let page = browser.page().await.expect("a page");
    page.set_viewport(1280, 800, 1.0, false).await.expect("desktop viewport");

    // The token comes in the fragment, is kept for the tab and leaves the address bar.
    page.navigate(&format!("{}/#token={token}", info.url)).await.expect("open the UI");
    wait(&page, "the socket to open", CONNECTED, 20).await;
    assert_eq!(eval(&page, "location.href").await, format!("{}/", info.url), "the token left the address bar");
    assert_eq!(eval(&page, "sessionStorage.getItem('devgem.token')").await, json!(token));
    wait(&page, "the user's name", "document.querySelector('[data-testid=whoami]').textContent === 'admin'", 10).await;

    // The markdown renderer builds elements and text, never HTML from the text.
    let rendered = eval(
        &page,
        &format!(
            "import('/ui/markdown.js').then((m) => {{
                const div = document.createElement('div');
                div.append(m.renderMarkdown({source}));
                document.body.append(div);
                const out = {{
                    html: div.innerHTML,
                    dangerous: div.querySelectorAll('script, img, iframe, [onerror]').length,
                    strong: div.querySelector('strong')?.textContent,
                    em: div.querySelector('em')?.textContent,
                    code: div.querySelector('p code')?.textContent,
                    pre: div.querySelector('pre code')?.textContent,
                    items: [...div.querySelectorAll('ul li')].map((li) => li.textContent),
                    ordered: div.querySelectorAll('ol li').length,
                    links: [...div.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.rel, a.target, a.textContent]),
                }};
                div.remove();
                return out;
            }})",
            source = js(&format!(
                "**bold** and *it* with `a<b>c`\n\n- {XSS}\n- two\n\n1. first\n2. second\n\n```\n<b>not bold</b>\n```\n\n\
                 [bad](javascript:alert(1)) [good](https://example.com/a) see http://example.org/b."
            ))
        ),
    )
    .await;
    assert_eq!(rendered["dangerous"], 0, "no element from the text: {rendered}");
    assert_eq!(rendered["strong"], "bold");
    assert_eq!(rendered["em"], "it");
    assert_eq!(rendered["code"], "a<b>c");
    assert_eq!(rendered["pre"], "<b>not bold</b>");
    assert_eq!(rendered["items"], json!([XSS, "two"]), "the script shows as text");
    assert_eq!(rendered["ordered"], 2);
    assert_eq!(
        rendered["links"],
        json!([
            ["https://example.com/a", "noopener noreferrer", "_blank", "good"],
            ["http://example.org/b", "noopener noreferrer", "_blank", "http://example.org/b"]
        ]),
        "only http(s) links, opened apart: {rendered}"
    );

    // Deploy by typing in the chat.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/py-flask");
    let request = format!("deploy {}", fixture.display());
    say(&page, &request, true).await;
    wait(
        &page,
        "the user's message",
        &format!(
            "[...document.querySelectorAll('[data-testid=message][data-role=user]')].some((m) => m.textContent.trim() === {})",
            js(&request)
        ),
        20,
    )
    .await;
    let id = wait(
        &page,
        "a deployment card",
        "document.querySelector('[data-testid=deployment-card]')?.dataset.deploymentId",
        30,
    )
    .await;
    let id = id.as_str().expect("a deployment id").to_owned();
    wait(
        &page,
        "the first build log line",
        "document.querySelectorAll('[data-testid=build-log] .log-line').length > 0",
        120,
    )
    .await;
    let before = card(&page, &id).await;
    let session = eval(&page, "localStorage.getItem('devgem.session')").await;
    assert!(session.is_string(), "the session is kept for a reload: {session}");
    let seq_before_reload = eval(&page, "devgem.lastSeq").await.as_u64().expect("lastSeq");

    // A reload mid-deploy replays the session and resumes the stream.
    page.reload().await.expect("reload");
    wait(&page, "the socket to open again", CONNECTED, 20).await;
    assert_eq!(eval(&page, "localStorage.getItem('devgem.session')").await, session, "the same conversation");
    let after = wait(
        &page,
        "the card and its log after the reload",
        &format!(
            "document.querySelectorAll(`[data-deployment-id=${{CSS.escape({})}}] [data-testid=build-log] .log-line`).length >= {}",
            js(&id),
            keys(&before).len()
        ),
        30,
    )
    .await;
    assert_eq!(after, json!(true));
    let replayed = card(&page, &id).await;
    assert!(keys(&replayed).starts_with(&keys(&before)), "the log replays in order: {before} / {replayed}");
    page.screenshot(&screenshot_path("ui-desktop-deploying.png")).await.expect("screenshot while deploying");

    // The deploy goes live; the bar only ever moves forward.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut percents = Vec::new();
    let done = loop {
        let now = card(&page, &id).await;
        percents.push(now["percent"].as_u64().unwrap_or(0));
        match now["state"].as_str() {
            Some("live") if now["url"].is_string() => break now,
            Some("failed" | "aborted") => panic!("the deployment failed: {}", now["outcome"]),
            _ => {}
        }
        assert!(Instant::now() < deadline, "not live after 5 minutes: {now}\n{}", page.console().join("\n"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "the progress bar never goes back: {percents:?}");
    assert_eq!(done["percent"], 100, "{done}");
    for stage in done["stages"].as_array().expect("stages") {
        assert!(matches!(stage[1].as_str(), Some("done" | "skipped")), "every stage ended: {done}");
    }
    assert_eq!(done["stages"].as_array().map(Vec::len), Some(7));
    assert!(!done["elapsed"].as_str().unwrap_or_default().is_empty(), "the elapsed time shows");
    let seq_live = eval(&page, "devgem.lastSeq").await.as_u64().expect("lastSeq");
    assert!(seq_live > seq_before_reload, "events kept coming after the reload");

    // Every build line once: as many as the server sent, none twice.
    let shown = keys(&done);
    let distinct: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(distinct.len(), shown.len(), "a build log line shows twice: {shown:?}");
    let session = session.as_str().expect("session id");
    let conn = crate::support::Conn { url: info.url.clone(), token: token.clone() };
    let sent: BTreeSet<(String, u64)> = events(&conn, session)
        .await
        .iter()
        .filter(|e| e["type"] == "build_log" && e["data"]["deployment_id"] == id.as_str())
        .flat_map(|e| {
            let build = e["data"]["build_id"].as_str().unwrap_or_default().to_owned();
            let first = e["data"]["first_line"].as_u64().unwrap_or_default();
            let n = e["data"]["lines"].as_array().map(Vec::len).unwrap_or_default() as u64;
            (first..first + n).map(move |line| (build.clone(), line))
        })
        .collect();
    assert_eq!(shown.len(), sent.len(), "the page shows every line the server sent, once");
    let texts: Vec<&str> = done["texts"].as_array().expect("texts").iter().filter_map(Value::as_str).collect();
    assert!(texts.iter().any(|t| t.starts_with("Step 1/")), "{texts:?}");

    // The live URL is a link, and it answers.
    let url = done["url"].as_str().expect("live url");
    let port = info.url.rsplit(':').next().expect("port");
    assert_eq!(url, format!("http://py-flask.localhost:{port}/"));
    let response = reqwest::Client::new()
        .get(format!("{}/", info.url))
        .header("host", format!("py-flask.localhost:{port}"))
        .send()
        .await
        .expect("GET the live URL");
    assert_eq!(response.status(), 200, "the live URL answers");
    wait(
        &page,
        "the deployment in the list, live",
        &format!(
            "document.querySelector(`[data-testid=deployments-list] [data-deployment-id=${{CSS.escape({})}}]`)?.dataset.state === 'live'",
            js(&id)
        ),
        15,
    )
    .await;

    // Screenshots for review: the desktop layout, then a 390 px wide phone (the rest runs on it).
    eval(&page, "document.querySelector('[data-testid=timeline]').scrollTop = 1e9").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    page.screenshot(&screenshot_path("ui-desktop.png")).await.expect("desktop screenshot");
    page.set_viewport(390, 844, 1.0, true).await.expect("phone viewport");
    wait(
        &page,
        "the narrow layout",
        "innerWidth === 390 && getComputedStyle(document.querySelector('[data-testid=menu]')).display !== 'none'",
        10,
    )
    .await;
    eval(&page, "document.querySelector('[data-testid=timeline]').scrollTop = 1e9").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    page.screenshot(&screenshot_path("ui-390.png")).await.expect("phone screenshot");
    let overflow = eval(&page, "document.documentElement.scrollWidth - innerWidth").await;
    assert_eq!(overflow, 0, "nothing is wider than the phone's screen");

    // A message with HTML in it shows as text, and runs nothing.
    say(&page, XSS, false).await;
    wait(
        &page,
        "the message shown as text",
        &format!(
            "[...document.querySelectorAll('[data-testid=message][data-role=user]')].some((m) => m.textContent.includes({}))",
            js(XSS)
        ),
        20,
    )
    .await;
    wait(
        &page,
        "the chat's answer",
        "document.querySelectorAll('[data-testid=message][data-role=assistant]').length >= 2",
        20,
    )
    .await;
    assert_eq!(eval(&page, "document.querySelectorAll('.timeline script, .timeline img').length").await, 0);
    assert_eq!(eval(&page, "typeof window.__pwned").await, "undefined", "nothing ran");

    // The deployment's runtime logs, and its env editor: a secret is written, never shown back.
    page.set_viewport(1280, 800, 1.0, false).await.expect("desktop viewport");
    eval(
        &page,
        &format!(
            "document.querySelector(`[data-testid=deployment-card][data-deployment-id=${{CSS.escape({})}}] [data-testid=open-logs]`).click()",
            js(&id)
        ),
    )
    .await;
    wait(
        &page,
        "runtime log lines",
        "document.querySelectorAll('[data-testid=logs-view] .runtime-log .log-line').length > 0",
        20,
    )
    .await;
    let secret = format!("s3cr3t-{}", std::process::id());
    eval(
        &page,
        &format!(
            "(() => {{
                document.querySelector('#tab-env').click();
                const add = (name, value, secret) => {{
                    document.querySelector('#env-new-name').value = name;
                    document.querySelector('#env-new-value').value = value;
                    document.querySelector('#env-new-secret').checked = secret;
                    document.querySelector('#env-add').click();
                }};
                add('GREETING', 'hello', false);
                add('API_KEY', {}, true);
                document.querySelector('[data-testid=env-save]').click();
            }})()",
            js(&secret)
        ),
    )
    .await;
    let rows = wait(
        &page,
        "the new deployment's variables",
        "(() => {
            const rows = [...document.querySelectorAll('[data-testid=env-editor] [data-testid=env-row]')]
                .map((r) => [r.dataset.name, r.dataset.secret, r.querySelector('input').value, r.textContent.includes('••• set')]);
            return document.querySelector('[data-testid=env-status]').textContent.startsWith('Saved') && rows.length === 2 && rows;
        })()",
        30,
    )
    .await;
    assert_eq!(rows, json!([["API_KEY", "true", "", true], ["GREETING", "false", "hello", false]]));
    let leaked = eval(
        &page,
        &format!(
            "document.documentElement.outerHTML.includes({s}) || [...document.querySelectorAll('input')].some((i) => i.value.includes({s}))",
            s = js(&secret)
        ),
    )
    .await;
    assert_eq!(leaked, false, "the secret's value is not on the page");
    wait(
        &page,
        "the redeploy with the new env, live",
        "[...document.querySelectorAll('[data-testid=deployment-card]')].filter((c) => c.dataset.state === 'live').length === 2",
        120,
    )
    .await;
    eval(&page, "document.querySelector('#panel-close').click()").await;

    // Nothing was refused by the page's Content-Security-Policy, and no script failed.
    let console = page.console();
    let problems: Vec<&String> = console
        .iter()
        .filter(|l| {
            l.contains("Content Security Policy") || l.starts_with("exception") || l.starts_with("console.error")
        })
        .collect();
    assert!(problems.is_empty(), "the console shows problems: {problems:#?}");

    eprintln!("browser test: {:.1}s", started.elapsed().as_secs_f64());
}
