//! Native libraries a dependency needs at build or run time, as Debian packages. One table,
//! each entry with its reason; add a row to teach the analyzer a new library.

use super::model::Language;

#[derive(Debug)]
pub struct NativeDependency {
    pub ecosystem: Language,
    /// The dependency's name as the manifest spells it (normalized: lowercase, `_` → `-`).
    pub dependency: &'static str,
    pub packages: &'static [&'static str],
    pub reason: &'static str,
}

const fn row(
    ecosystem: Language,
    dependency: &'static str,
    packages: &'static [&'static str],
    reason: &'static str,
) -> NativeDependency {
    NativeDependency { ecosystem, dependency, packages, reason }
}

use Language::{Elixir, Javascript, Php, Python, Ruby, Rust};

pub const TABLE: &[NativeDependency] = &[
    row(Python, "opencv-python", &["libgl1", "libglib2.0-0"], "OpenCV's wheels load libGL and GLib at import"),
    row(Python, "opencv-contrib-python", &["libgl1", "libglib2.0-0"], "OpenCV's wheels load libGL and GLib at import"),
    row(Python, "psycopg2", &["libpq-dev"], "psycopg2 (not -binary) compiles against libpq"),
    row(
        Python,
        "mysqlclient",
        &["default-libmysqlclient-dev"],
        "mysqlclient compiles against the MySQL client library",
    ),
    row(Python, "python-ldap", &["libldap2-dev", "libsasl2-dev"], "python-ldap compiles against OpenLDAP and SASL"),
    row(Python, "pycairo", &["libcairo2-dev"], "pycairo compiles against cairo"),
    row(Python, "weasyprint", &["libpango-1.0-0", "libpangoft2-1.0-0"], "WeasyPrint renders with Pango"),
    row(Python, "pdf2image", &["poppler-utils"], "pdf2image calls poppler's pdftoppm"),
    row(Python, "pytesseract", &["tesseract-ocr"], "pytesseract calls the tesseract binary"),
    row(Python, "ffmpeg-python", &["ffmpeg"], "ffmpeg-python calls the ffmpeg binary"),
    row(Python, "moviepy", &["ffmpeg"], "MoviePy calls the ffmpeg binary"),
    row(Python, "pydub", &["ffmpeg"], "pydub calls ffmpeg for anything but WAV"),
    row(Python, "python-magic", &["libmagic1"], "python-magic loads libmagic"),
    row(Python, "pyodbc", &["unixodbc-dev"], "pyodbc compiles against unixODBC"),
    row(Python, "lxml", &["libxml2-dev", "libxslt1-dev"], "lxml builds against libxml2 when no wheel fits"),
    row(Python, "xmlsec", &["libxmlsec1-dev", "pkg-config"], "xmlsec compiles against libxmlsec1"),
    row(Javascript, "canvas", &["libcairo2-dev"], "node-canvas builds against cairo"),
    row(Javascript, "pg-native", &["libpq-dev"], "pg-native compiles against libpq"),
    row(Javascript, "fluent-ffmpeg", &["ffmpeg"], "fluent-ffmpeg calls the ffmpeg binary"),
    row(Javascript, "puppeteer", &["chromium"], "Puppeteer needs a browser; Debian's chromium replaces its download"),
    row(
        Javascript,
        "bcrypt",
        &["python3", "make", "g++"],
        "bcrypt compiles a native addon when no prebuilt binary fits",
    ),
    row(Ruby, "pg", &["libpq-dev"], "the pg gem compiles against libpq"),
    row(Ruby, "mysql2", &["default-libmysqlclient-dev"], "mysql2 compiles against the MySQL client library"),
    row(Ruby, "sqlite3", &["libsqlite3-dev"], "the sqlite3 gem compiles against SQLite"),
    row(Ruby, "rmagick", &["libmagickwand-dev"], "RMagick compiles against ImageMagick"),
    row(Ruby, "mini-magick", &["imagemagick"], "MiniMagick calls ImageMagick's binaries"),
    row(Ruby, "ruby-vips", &["libvips42"], "ruby-vips loads libvips"),
    row(Ruby, "image-processing", &["libvips42"], "image_processing uses libvips by default"),
    row(
        Php,
        "ext-gd",
        &["libpng-dev", "libjpeg-dev", "libfreetype6-dev"],
        "the gd extension builds against libpng, libjpeg and FreeType",
    ),
    row(Php, "ext-intl", &["libicu-dev"], "the intl extension builds against ICU"),
    row(Php, "ext-zip", &["libzip-dev"], "the zip extension builds against libzip"),
    row(Php, "ext-pgsql", &["libpq-dev"], "the pgsql extension builds against libpq"),
    row(Php, "ext-pdo-pgsql", &["libpq-dev"], "pdo_pgsql builds against libpq"),
    row(Php, "ext-imagick", &["libmagickwand-dev"], "the imagick extension builds against ImageMagick"),
    row(Rust, "diesel/postgres", &["libpq-dev"], "diesel's postgres backend links libpq"),
    row(Rust, "diesel/mysql", &["default-libmysqlclient-dev"], "diesel's mysql backend links the MySQL client"),
    row(Rust, "openssl", &["libssl-dev", "pkg-config"], "the openssl crate links OpenSSL"),
    row(Elixir, "bcrypt-elixir", &["build-essential"], "bcrypt_elixir compiles a NIF"),
];

/// The rows matching `dependency` (normalized) in `ecosystem`.
pub fn lookup(ecosystem: Language, dependency: &str) -> impl Iterator<Item = &'static NativeDependency> + '_ {
    let ecosystem = match ecosystem {
        Language::Typescript => Language::Javascript,
        other => other,
    };
    TABLE.iter().filter(move |row| row.ecosystem == ecosystem && row.dependency == dependency)
}

/// Normalizes a dependency name: lowercase, `_` and `.` → `-`.
pub fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace(['_', '.'], "-")
}
