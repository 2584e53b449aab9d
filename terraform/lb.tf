# Optional (var.domain): one HTTPS origin for browsers. The web UI, served by the relay, calls
# /api/* on its own origin, exactly as behind `devgem up`; this load balancer routes the api's
# paths to the api service and everything else (the UI, /ws/chat) to the relay, like
# cli/src/up.rs does in one process.

locals {
  lb_enabled   = var.domain != ""
  lb_functions = local.lb_enabled ? toset(["relay", "api"]) : toset([])
  # The api's routes (functions/api ROUTES and `devgem up`'s split); the rest is the relay's.
  api_paths = ["/api", "/api/*", "/chat", "/stats", "/health"]
}

resource "google_compute_region_network_endpoint_group" "lb" {
  for_each = local.lb_functions

  project               = var.project_id
  name                  = "${var.name_prefix}-${each.key}-neg"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = google_cloud_run_v2_service.function[each.key].name
  }

  depends_on = [google_project_service.apis]
}

resource "google_compute_backend_service" "lb" {
  for_each = local.lb_functions

  project               = var.project_id
  name                  = "${var.name_prefix}-${each.key}"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"

  backend {
    group = google_compute_region_network_endpoint_group.lb[each.key].id
  }
}

resource "google_compute_url_map" "lb" {
  count = local.lb_enabled ? 1 : 0

  project         = var.project_id
  name            = "${var.name_prefix}-lb"
  default_service = google_compute_backend_service.lb["relay"].id

  host_rule {
    hosts        = [var.domain]
    path_matcher = "devgem"
  }

  path_matcher {
    name            = "devgem"
    default_service = google_compute_backend_service.lb["relay"].id

    path_rule {
      paths   = local.api_paths
      service = google_compute_backend_service.lb["api"].id
    }
  }
}

resource "google_compute_managed_ssl_certificate" "lb" {
  count = local.lb_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name_prefix}-cert"

  managed {
    domains = [var.domain]
  }
}

resource "google_compute_target_https_proxy" "lb" {
  count = local.lb_enabled ? 1 : 0

  project          = var.project_id
  name             = "${var.name_prefix}-https"
  url_map          = google_compute_url_map.lb[0].id
  ssl_certificates = [google_compute_managed_ssl_certificate.lb[0].id]
}

resource "google_compute_global_address" "lb" {
  count = local.lb_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name_prefix}-lb"

  depends_on = [google_project_service.apis]
}

resource "google_compute_global_forwarding_rule" "https" {
  count = local.lb_enabled ? 1 : 0

  project               = var.project_id
  name                  = "${var.name_prefix}-https"
  target                = google_compute_target_https_proxy.lb[0].id
  ip_address            = google_compute_global_address.lb[0].address
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}

# Plain HTTP only redirects to HTTPS.
resource "google_compute_url_map" "http_redirect" {
  count = local.lb_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name_prefix}-http-redirect"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "http_redirect" {
  count = local.lb_enabled ? 1 : 0

  project = var.project_id
  name    = "${var.name_prefix}-http"
  url_map = google_compute_url_map.http_redirect[0].id
}

resource "google_compute_global_forwarding_rule" "http" {
  count = local.lb_enabled ? 1 : 0

  project               = var.project_id
  name                  = "${var.name_prefix}-http"
  target                = google_compute_target_http_proxy.http_redirect[0].id
  ip_address            = google_compute_global_address.lb[0].address
  port_range            = "80"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}
