//! The TLS and SASL material of a pipeline, read from its Secrets for the operator's own Kafka and
//! ClickHouse connections (the services get the same Secret keys as env vars).

use flightline_service::connect::{ClientCertificate, KafkaSecurity, SaslCredentials};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::Context;
use super::clickhouse::ClickHouseError;
use super::kafka::KafkaError;
use crate::crd::CaSecretRef;
use crate::spec::security::KafkaSecurityRefs;

/// One key of a Secret, as text; what is missing is said in words.
async fn read_key(secrets: &Api<Secret>, name: &str, key: &str) -> Result<String, String> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?
        .ok_or_else(|| format!("Secret {name} not found"))?;
    let value =
        secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| format!("Secret {name} has no key {key}"))?;
    String::from_utf8(value.0.clone()).map_err(|_| format!("Secret {name} key {key} is not UTF-8 text"))
}

/// The Kafka security of a pipeline with its Secrets read.
pub async fn kafka(namespace: &str, refs: &KafkaSecurityRefs, ctx: &Context) -> Result<KafkaSecurity, KafkaError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let sasl = match &refs.sasl {
        None => None,
        Some((mechanism, secret)) => Some(SaslCredentials {
            mechanism: *mechanism,
            username: read_key(&secrets, &secret.name, &secret.username_key).await.map_err(KafkaError::Secret)?,
            password: read_key(&secrets, &secret.name, &secret.password_key).await.map_err(KafkaError::Secret)?,
        }),
    };
    let ca_pem = match &refs.ca {
        None => None,
        Some(ca) => Some(read_key(&secrets, &ca.name, &ca.key).await.map_err(KafkaError::Secret)?),
    };
    let client_certificate = match &refs.client_certificate {
        None => None,
        Some(c) => Some(ClientCertificate {
            certificate_pem: read_key(&secrets, &c.name, &c.cert_key).await.map_err(KafkaError::Secret)?,
            key_pem: read_key(&secrets, &c.name, &c.key_key).await.map_err(KafkaError::Secret)?,
        }),
    };
    Ok(KafkaSecurity { protocol: refs.protocol, sasl, ca_pem, client_certificate })
}

/// The PEM CA bundle of ClickHouse's certificate, when the pipeline names one.
pub async fn clickhouse_ca(
    namespace: &str,
    ca: Option<&CaSecretRef>,
    ctx: &Context,
) -> Result<Option<String>, ClickHouseError> {
    let Some(ca) = ca else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    read_key(&secrets, &ca.name, &ca.key).await.map(Some).map_err(ClickHouseError::Settings)
}
